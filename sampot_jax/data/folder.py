"""Plain-folder reader for users' own data (source='folder'), no TFDS involved.

Layout: `images/` (PNG/JPEG/TIFF, 8- or 16-bit; 16-bit scaled by each image's own
min/max) with masks of the same file name in `masks/left/` + `masks/right/`, or in
one `masks/` folder holding the target structure only; an optional `splits.csv`
(id,split[,finding]), else the deterministic split of splits.py.
"""
from absl import logging

from sampot_jax.data import lungs
from sampot_jax.data import sources


def read_split(root, split: str, size: int, on_bad_example: str = "error") -> tuple[list, list]:
  """Reads one split at (size, size).

  Returns:
    (examples, skipped): examples as sources.read_subject dicts resized to `size`,
    sorted by id; skipped as [(file, problem)], empty unless on_bad_example='skip'.
  """
  scan = sources.scan("folder", root)
  if scan.unlisted:
    logging.warning("%d image(s) under %s are not named in %s and are not used: %s",
                    len(scan.unlisted), root, scan.split_file, scan.unlisted[:10])
  skipped = []

  def bad(error):
    if on_bad_example == "error":
      raise error
    logging.warning("Skipping bad example in %s: %s", split, error)
    skipped.append((error.path, error.problem))

  for error in scan.absent.get(split, []):
    bad(error)
  examples = []
  for sid in scan.ids(split):
    try:
      examples.append(sources.resize_example(sources.read_subject(scan.subjects[sid]), size))
    except lungs.BadExampleError as error:
      bad(error)
  return examples, skipped
