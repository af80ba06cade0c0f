"""Plain-folder reader for users' own data (source='folder'), no TFDS involved.

Layout: `images/` (PNG/JPEG/TIFF, 8- or 16-bit, 16-bit scaled by each image's own
min/max; DICOM; single-slice NIfTI) with masks of the same file name in `masks/left/` +
`masks/right/`, in `masks/<target>/` (any structure, e.g. `masks/heart/`), or in one
`masks/` folder holding the target structure only; masks are 0/1 or 0/255, or label
maps read with `label=N`; an optional `splits.csv` (id,split[,finding]), else the
seeded deterministic split of splits.py (a training run writes it to its workdir).

A subject has one image and one mask per folder: two files that could both be
it (`X.png` beside `X.jpg` in images/, or `X.png` beside `X.gif` or `X_mask.png`
in a mask folder) are an error naming both, or a logged skip of that subject
with on_bad_example='skip', never a silent pick of one.
"""
from pathlib import Path

from absl import logging

from sampot_jax import errors
from sampot_jax.data import raw
from sampot_jax.data import sources


def _files_by_stem(folder: Path, suffixes) -> dict:
  """{stem: [files]} of the files directly in `folder` with one of `suffixes` (any case)."""
  out = {}
  if folder.is_dir():
    for path in raw.list_images(folder, suffixes):
      out.setdefault(sources.file_id(path), []).append(path)
  return out


def _ambiguous(scan: sources.Scan, root: Path) -> dict:
  """{id: errors.BadInputError} for subjects with two files that could be their image or a mask."""
  images = _files_by_stem(root / "images", sources.FOLDER_SUFFIXES)
  masks = {}  # mask folder -> {stem: [files]}
  found = {}
  for sid, subject in scan.subjects.items():
    if len(images.get(sid, [])) > 1:
      files = images[sid]
      found[sid] = errors.BadInputError(files[0], (
          f"{' and '.join(p.name for p in files)} in {files[0].parent} could each be image "
          f"{sid!r}; keep one of them (remove or rename the other)."))
      continue
    for mask in (subject.left, subject.right, subject.single):
      if mask is None:
        continue
      if mask.parent not in masks:
        masks[mask.parent] = _files_by_stem(mask.parent, sources.FOLDER_MASK_SUFFIXES)
      files = masks[mask.parent].get(sid, []) + masks[mask.parent].get(sid + "_mask", [])
      if len(files) > 1:
        found[sid] = errors.BadInputError(files[0], (
            f"{' and '.join(p.name for p in files)} in {files[0].parent} could each be the "
            f"mask of image {sid!r}; keep one of them (remove or rename the other)."))
        break
  return found


def read_split(root, split: str, size: int, on_bad_example: str = "error", target: str = "left",
               label: int = 0, split_seed: int = 0) -> tuple[list, list]:
  """Reads one split at (size, size); `target`, `label`, `split_seed` as settings.Data's.

  Returns:
    (examples, skipped): examples as sources.read_subject dicts resized to `size`,
    sorted by id; skipped as [(file, problem)], empty unless on_bad_example='skip'.
  """
  scan = sources.scan("folder", root, target, split_seed)
  if scan.unlisted:
    logging.warning("%d image(s) under %s are not named in %s and are not used: %s",
                    len(scan.unlisted), root, scan.split_file, scan.unlisted[:10])
  skipped = []

  def bad(error):
    if on_bad_example == "error":
      raise error
    logging.warning("Skipping bad example in %s: %s", split, error)
    skipped.append((error.file, error.reason))

  for error in scan.absent.get(split, []):
    bad(error)
  ambiguous = _ambiguous(scan, Path(root).expanduser())
  examples = []
  for sid in scan.ids(split):
    if sid in ambiguous:
      bad(ambiguous[sid])
      continue
    try:
      examples.append(sources.resize_example(sources.read_subject(scan.subjects[sid], label), size))
    except errors.BadInputError as error:
      bad(error)
  return examples, skipped
