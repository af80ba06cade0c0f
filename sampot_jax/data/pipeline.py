"""`load_split`: one split of any source, in memory, as a `LungSet`."""
from absl import logging

from sampot_jax import errors
from sampot_jax.data import folder
from sampot_jax.data import lungs
from sampot_jax.data import sources
from sampot_jax.data import splits as splits_lib


def load_split(data_config, split: str) -> lungs.LungSet:
  """Loads one split of `data_config.source` into memory.

  Args:
    data_config: config.data (runtime.settings.Data).
    split: 'train' | 'val' | 'test'.

  Returns:
    LungSet with images (N, S, S) uint8 and masks (N, S, S) bool, S = image_size,
    sorted by id; `skipped` lists the bad examples left out ((file, problem), ...).
  """
  source, size = data_config.source, int(data_config.image_size)
  on_bad = data_config.on_bad_example
  target = data_config.target
  if split not in splits_lib.SPLITS:
    raise errors.ConfigError(f"split={split!r} is not one of {splits_lib.SPLITS}.")
  if source not in sources.SOURCES:
    raise errors.ConfigError(f"config.data.source={source!r} is not one of {sources.SOURCES}.")
  if on_bad not in lungs.ON_BAD_EXAMPLE:
    raise errors.ConfigError(f"config.data.on_bad_example={on_bad!r} is not one of "
                     f"{lungs.ON_BAD_EXAMPLE}.")
  if target not in lungs.TARGETS and (source != "folder" or not _is_name(target)):
    raise errors.ConfigError(f"config.data.target={target!r} is not one of {lungs.TARGETS}"
                             + (" (another structure: its mask folder's name, e.g. 'heart')"
                                if source == "folder" else
                                "; other structures need source='folder' (masks/<target>/)")
                             + ".")
  if data_config.label and source != "folder":
    raise errors.ConfigError(f"config.data.label={data_config.label} reads label maps of a plain "
                             "folder; set config.data.source='folder' (or label=0).")
  if size < 8:
    raise errors.ConfigError(f"config.data.image_size={size} is too small; use e.g. 256.")
  if not data_config.dir:
    raise errors.ConfigError("config.data.dir is not set; point it at the raw data folder.")

  if source == "folder":
    examples, skipped = folder.read_split(data_config.dir, split, size, on_bad, target,
                                          data_config.label, data_config.split_seed)
  else:
    # TFDS is imported only here: configs and the folder reader stay light.
    from sampot_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
    builder = tfds_builder.prepare(source, data_config.dir, data_config.tfds_dir, on_bad)
    skipped = _prepared_skips(builder, split, on_bad)
    examples = [sources.resize_example(e, size) for e in tfds_builder.read_split(builder, split)]
  if skipped:
    logging.warning("%s/%s: %d bad example(s) skipped, %d loaded.", source, split,
                    len(skipped), len(examples))
  if not examples:
    raise errors.ConfigError(f"split {split!r} of source {source!r} in {data_config.dir} has no "
                     "usable example.")
  stacked = sources.stack_examples(examples)
  skipped = tuple((str(path), str(problem)) for path, problem in skipped)
  if stacked["single"] is not None:
    return lungs.LungSet(stacked["ids"], stacked["images"], None, None, target_only=target,
                         skipped=skipped, single=stacked["single"])
  return lungs.LungSet(stacked["ids"], stacked["images"], stacked["left"], stacked["right"],
                       skipped=skipped)


def split_table(data_config) -> tuple[dict, dict] | None:
  """The split a set without a split file gets: ({id: split}, {id: finding}); None when the data
  folder has a split file. Only file names are read."""
  scan = sources.scan(data_config.source, data_config.dir, data_config.target,
                      data_config.split_seed)
  if scan.split_file is not None:
    return None
  return scan.splits, {sid: s.finding for sid, s in scan.subjects.items()}


def _is_name(target: str) -> bool:
  return bool(target) and target.replace("_", "").replace("-", "").isalnum()


def _prepared_skips(builder, split, on_bad) -> list:
  """Skips recorded when the TFDS data was prepared; an error if they break the policy."""
  meta = builder.info.metadata or {}
  skipped = (meta.get("skipped") or {}).get(split, [])
  if skipped and on_bad == "error":
    raise errors.BadInputError(
        skipped[0][0], f"{skipped[0][1]} (this and {len(skipped) - 1} more were skipped when "
        f"{builder.data_dir} was prepared with on_bad_example='skip'; fix the files and delete "
        "that folder, or set on_bad_example='skip').")
  return skipped
