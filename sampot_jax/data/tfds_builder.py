"""TFDS builder for chest X-ray lung sets, usable without TensorFlow.

Arrays are stored as zlib-encoded `tfds.features.Tensor`s in `array_record`
files and read back with `builder.as_data_source()` (random access, no tf.data).
Every config is stored at 512x512 (`STORED_SIZE`): the size of the team set, small
on disk (the NLM originals are ~4000x5000), and above the 256 the regressor uses;
images are resized with antialiased bilinear, masks by area fraction > 1/2, and
the aspect ratio is not kept (as in the team set). The original size is kept in
the metadata.

Prepared data lives in a folder keyed by the source folder's path
(`<tfds_dir>/src_<hash>/`), so two data sets in one layout never share it, and
carries a fingerprint of the source files (names, sizes, modification times, content hashes):
a source edited after preparation stops the run with what changed and how to
rebuild, instead of silently training on the old copy.
"""
import contextlib
import hashlib
import os
from pathlib import Path

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from sampot_jax import errors
from sampot_jax.data import lungs
from sampot_jax.data import sources
from sampot_jax.data import splits as splits_lib

STORED_SIZE = 512
ON_BAD_EXAMPLE = lungs.ON_BAD_EXAMPLE

_INSTRUCTIONS = """\
Download the data set yourself and pass its folder as the manual directory
(config.data.dir; TFDS: DownloadConfig(manual_dir=...)). Expected layouts:
- montgomery_team: images/, masks/left/, masks/right/, splits.csv (team copy).
- montgomery_nlm: CXR_png/MCUCXR_*.png, ManualMask/leftMask/, ManualMask/rightMask/
  (https://openi.nlm.nih.gov/faq, "Montgomery County X-ray Set").
- shenzhen: CXR_png/CHNCXR_*.png and lung masks in mask/ (CHNCXR_NNNN_F_mask.png).
- jsrt_scr: the JSRT *.IMG files and the SCR masks (folders 'left lung/', 'right lung/'
  of .gif files) anywhere below one folder.
"""


class ChestXrayLungsConfig(tfds.core.BuilderConfig):
  """One raw layout (`source`, see sources.py)."""

  def __init__(self, *, source: str, **kwargs):
    super().__init__(name=source, **kwargs)
    self.source = source


class ChestXrayLungs(tfds.core.GeneratorBasedBuilder):
  """Chest radiographs with left- and right-lung masks at 512x512."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [
      ChestXrayLungsConfig(source="montgomery_team",
                           description="Team copy of Montgomery, 512x512, fixed splits.csv."),
      ChestXrayLungsConfig(source="montgomery_nlm",
                           description="NLM Montgomery County set, original layout."),
      ChestXrayLungsConfig(source="shenzhen",
                           description="NLM Shenzhen set, merged masks split into lungs."),
      ChestXrayLungsConfig(source="jsrt_scr", description="JSRT radiographs, SCR masks."),
  ]
  DEFAULT_CONFIG_NAME = "montgomery_team"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9's default resolves this through `importlib_resources`, a package newer
    # etils no longer installs; the answer is simply this file.
    return epath.Path(__file__)

  def __init__(self, *, on_bad_example: str = "error", **kwargs):
    if on_bad_example not in ON_BAD_EXAMPLE:
      raise errors.ConfigError(f"on_bad_example={on_bad_example!r} is not one of {ON_BAD_EXAMPLE}.")
    self._on_bad_example = on_bad_example
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    square = (STORED_SIZE, STORED_SIZE)
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Chest X-rays with the patient's left and right lung masks (0/1), "
                     "512x512, left lung on the image's right side."),
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "image": tfds.features.Tensor(shape=square, dtype=np.uint8, encoding="zlib"),
            "left": tfds.features.Tensor(shape=square, dtype=np.uint8, encoding="zlib"),
            "right": tfds.features.Tensor(shape=square, dtype=np.uint8, encoding="zlib"),
            "metadata": {
                "dataset": tfds.features.Text(),
                "finding": tfds.features.Text(),
                "file": tfds.features.Text(),
                "height": tfds.features.Scalar(dtype=np.int32),
                "width": tfds.features.Scalar(dtype=np.int32),
            },
        }),
        metadata=tfds.core.MetadataDict(),
        homepage="https://openi.nlm.nih.gov/faq",
    )

  def _split_generators(self, dl_manager):
    root = Path(dl_manager.manual_dir)
    scan = sources.scan(self.builder_config.source, root)
    if scan.unlisted:
      logging.warning("%d image(s) under %s are not named in %s and are not used: %s",
                      len(scan.unlisted), root, scan.split_file, scan.unlisted[:10])
    # Filled while the generators run; written with dataset_info at the end.
    skipped = {split: [] for split in splits_lib.SPLITS}
    self.info.metadata.update({"on_bad_example": self._on_bad_example,
                               "manual_dir": str(root.resolve()), "skipped": skipped,
                               "source_files": source_files(root)})
    return {split: self._generate_examples(scan, split, skipped[split])
            for split in splits_lib.SPLITS}

  def _generate_examples(self, scan, split, skipped):
    for error in scan.absent.get(split, []):
      self._bad(error, split, skipped)
    for sid in scan.ids(split):
      try:
        ex = sources.resize_example(sources.read_subject(scan.subjects[sid]), STORED_SIZE)
      except errors.BadInputError as error:
        self._bad(error, split, skipped)
        continue
      yield sid, {
          "id": sid,
          "image": ex["image"],
          "left": ex["left"].astype(np.uint8),
          "right": ex["right"].astype(np.uint8),
          "metadata": {k: ex[k] for k in ("dataset", "finding", "file", "height", "width")},
      }
    if skipped:
      logging.warning("%s/%s: skipped %d bad example(s).", self.builder_config.name, split,
                      len(skipped))

  def _bad(self, error, split, skipped):
    if self._on_bad_example == "error":
      raise error
    logging.warning("Skipping bad example in %s: %s", split, error)
    skipped.append([error.file, error.reason])


def _content_hash(path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()[:16]


def source_files(root, content: bool = True) -> dict:
  """{relative path: [size, mtime_ns, sha256 prefix]} of every non-hidden file below `root`
  (without the hash when `content` is False)."""
  root = Path(root)
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for name in sorted(filenames):
      if not name.startswith("."):
        path = Path(dirpath) / name
        st = path.stat()
        out[str(path.relative_to(root))] = [st.st_size, st.st_mtime_ns] + (
            [_content_hash(path)] if content else [])
  return out


def prepared_dir(manual_dir, tfds_dir=None) -> Path:
  """Where the data prepared from `manual_dir` lives: keyed by the folder's resolved path."""
  root = str(Path(manual_dir).expanduser().resolve())
  base = Path(tfds_dir).expanduser() if tfds_dir else Path(tfds.core.constants.DATA_DIR)
  return base / f"src_{hashlib.sha256(root.encode()).hexdigest()[:12]}"


def _changes(before: dict, now: dict, root: Path) -> str:
  """How the files below `root` (listed in `now` as [size, mtime_ns]) differ from the listing
  made when the data was prepared, or "" when they do not. A file with a new modification time
  but the same size is hashed: copying or checking out a data folder touches every file
  without changing one."""
  added = sorted(set(now) - set(before))
  removed = sorted(set(before) - set(now))

  def differs(name):
    (size, mtime), old = now[name][:2], list(before[name])
    if size != old[0]:
      return True
    if mtime == old[1]:
      return False
    return len(old) < 3 or _content_hash(root / name) != old[2]

  changed = sorted(k for k in set(now) & set(before) if differs(k))
  parts = []
  for what, names in (("added", added), ("removed", removed), ("changed", changed)):
    if names:
      more = f" and {len(names) - 3} more" if len(names) > 3 else ""
      parts.append(f"{len(names)} {what} ({', '.join(names[:3])}{more})")
  if any(len(before[k]) < 3 for k in changed):
    parts.append("the prepared copy predates content hashes, so a copied folder (new "
                 "modification times) cannot be told from an edited one")
  return "; ".join(parts)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
  """Holds an exclusive lock on `lock_path` (POSIX flock; elsewhere no lock)."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  with open(lock_path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(source: str, manual_dir, tfds_dir=None, on_bad_example: str = "error"):
  """Builds (once per source folder) and returns the builder for `source`.

  Raises ValueError when the source files changed since the data was prepared. Runs started
  together wait for one another here: the first prepares the data, the others reuse it (TFDS
  alone fails the second with "Destination ... already exists").
  """
  root = Path(manual_dir).expanduser().resolve()
  sources.check_dir(source, root)
  data_dir = prepared_dir(root, tfds_dir)
  with _exclusive(data_dir / f".{source}.lock"):
    return _prepare(source, root, data_dir, on_bad_example)


def _prepare(source: str, root: Path, data_dir: Path, on_bad_example: str):
  # The fingerprint (with content hashes) is made when the data is built (_split_generators),
  # not on every load.
  builder = ChestXrayLungs(config=source, data_dir=str(data_dir), on_bad_example=on_bad_example)
  if Path(builder.data_dir).is_dir() and (Path(builder.data_dir) / "dataset_info.json").exists():
    before = (builder.info.metadata or {}).get("source_files")
    changes = before is not None and _changes(dict(before), source_files(root, content=False),
                                               root)
    if changes:
      raise ValueError(
          f"The files in {root} changed after {builder.data_dir} was prepared from them: "
          f"{changes}. Delete that folder to prepare the data again "
          f"(rm -rf {builder.data_dir}).")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


def read_split(builder, split: str) -> list[dict]:
  """All examples of a prepared split, as numpy dicts sorted by id."""
  source = builder.as_data_source(split=split)
  out = []
  for i in range(len(source)):
    ex = source[i]
    meta = {k: (v.decode() if isinstance(v, bytes) else int(v))
            for k, v in ex["metadata"].items()}
    out.append({"id": ex["id"].decode(), "image": np.asarray(ex["image"]),
                "left": np.asarray(ex["left"]) > 0, "right": np.asarray(ex["right"]) > 0,
                "single": None, **meta})
  return sorted(out, key=lambda e: e["id"])
