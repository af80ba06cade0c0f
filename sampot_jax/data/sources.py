"""Raw dataset layouts: which files make up each subject, and their split.

Every source is scanned into `Subject` records (file paths only, nothing decoded)
and a {id: split} table; `read_subject` then decodes and checks one subject.
Layouts (paths relative to the data directory):

- montgomery_team: `images/ID.png`, `masks/left/ID.png`, `masks/right/ID.png`,
  `splits.csv` (id,split,finding). Required split file.
- folder: like montgomery_team, any of PNG/JPEG/TIFF/DICOM and single-slice NIfTI,
  and either `masks/left/` + `masks/right/`, `masks/<target>/` (any structure: the
  target names the folder, e.g. `masks/heart/`), or one `masks/` folder holding
  the target only; masks binary or, with a label, label maps; `splits.csv`
  optional.
- montgomery_nlm: `CXR_png/MCUCXR_*.png`, `ManualMask/leftMask/`, `ManualMask/rightMask/`.
- shenzhen: `CXR_png/CHNCXR_*.png` and merged two-lung masks in `mask/` (or `masks/`,
  `ManualMask/`) named `ID_mask.png` or `ID.png`; lungs separated by `split_lungs`.
- jsrt_scr: JSRT `*.IMG` anywhere below the directory; SCR `*.gif` masks in folders
  named `left lung/` and `right lung/` anywhere below it.

Sets without a split file get `splits.deterministic_split` (seeded by `split_seed`).
"""
import dataclasses
from pathlib import Path

import numpy as np

from sampot_jax import errors
from sampot_jax.data import images as images_lib
from sampot_jax.data import lungs
from sampot_jax.data import prepare
from sampot_jax.data import raw
from sampot_jax.data import splits as splits_lib
from sampot_jax.data import volumes

SOURCES = ("montgomery_team", "montgomery_nlm", "shenzhen", "jsrt_scr", "folder")
SPLIT_FILE = "splits.csv"
# A plain folder also takes DICOM files and single-slice NIfTI files (images and masks).
FOLDER_SUFFIXES = raw.IMAGE_SUFFIXES + images_lib.DICOM_SUFFIXES + (".nii", ".gz")
FOLDER_MASK_SUFFIXES = raw.MASK_SUFFIXES + images_lib.DICOM_SUFFIXES + (".nii", ".gz")
MASK_FILES = raw.MASK_SUFFIXES + images_lib.DICOM_SUFFIXES + images_lib.VOLUME_SUFFIXES
FINDINGS = {"0": "normal", "1": "tuberculosis"}  # NLM file-name suffix _F


@dataclasses.dataclass(frozen=True)
class Subject:
  """The files of one subject. Mask paths may name files that do not exist."""
  id: str
  image: Path
  left: Path | None = None
  right: Path | None = None
  merged: Path | None = None   # both lungs in one mask (Shenzhen)
  single: Path | None = None   # the target structure only (plain folder, masks/)
  finding: str = ""
  dataset: str = ""


@dataclasses.dataclass(frozen=True)
class Scan:
  """A scanned source.

  Attributes:
    subjects: {id: Subject} for every image found.
    splits: {id: split} for every id the split file names (or all, if derived).
    split_file: the split file used, or None for a deterministic split.
    absent: {split: [errors.BadInputError]} for ids the split file names without an image.
    unlisted: ids with an image that the split file does not name (not used).
  """
  subjects: dict
  splits: dict
  split_file: Path | None
  absent: dict
  unlisted: list

  def ids(self, split: str) -> list[str]:
    return sorted(s for s, sp in self.splits.items() if sp == split and s in self.subjects)


def check_dir(source: str, root) -> None:
  """A missing or empty data folder: an error saying where the data comes from."""
  root = Path(root).expanduser()
  if not root.is_dir() or not any(root.iterdir()):
    how = (prepare.how_to_get() if source == "montgomery_team" else
           "set config.data.dir to the raw data folder.")
    state = "is empty" if root.is_dir() else "does not exist"
    raise errors.MissingInputError(f"data directory {str(root)!r} for source {source!r} {state}. "
                                   f"{how}")


def scan(source: str, root, target: str = "left", split_seed: int = 0) -> Scan:
  """Lists the subjects of `source` under `root` (no decoding).

  `target` picks the plain folder's mask folder (`masks/<target>/` when it exists);
  `split_seed` seeds the split of a set without a split file."""
  root = Path(root).expanduser()
  if source not in SOURCES:
    raise errors.ConfigError(f"data source {source!r} is not one of {SOURCES}.")
  check_dir(source, root)
  if source == "folder":
    subjects = _scan_folder(root, source, target)
  else:
    subjects = {
        "montgomery_team": _scan_folder, "montgomery_nlm": _scan_montgomery_nlm,
        "shenzhen": _scan_shenzhen, "jsrt_scr": _scan_jsrt_scr,
    }[source](root, source)
  if not subjects:
    raise errors.MissingInputError(f"no images found for source {source!r} under {str(root)!r}; "
                            f"see the layout in {__name__}'s docstring.")
  split_file = root / SPLIT_FILE
  if not split_file.is_file():
    if source == "montgomery_team":
      raise errors.MissingInputError(f"{split_file} does not exist; the team layout carries a fixed "
                              "split file (id,split,finding).")
    table = splits_lib.deterministic_split({s.id: s.finding for s in subjects.values()},
                                           seed=split_seed)
    return Scan(subjects, table, None, {}, [])
  rows = splits_lib.read_splits_csv(split_file)
  absent = {}
  for sid, (split, _) in rows.items():
    if sid not in subjects:
      absent.setdefault(split, []).append(errors.BadInputError(
          split_file, f"names id {sid!r} ({split}), which has no image file; remove the row "
          "or restore the image."))
  for sid, (_, finding) in rows.items():
    if sid in subjects and finding and not subjects[sid].finding:
      subjects[sid] = dataclasses.replace(subjects[sid], finding=finding)
  table = {sid: split for sid, (split, _) in rows.items()}
  unlisted = sorted(set(subjects) - set(rows))
  return Scan(subjects, table, split_file, absent, unlisted)


def read_subject(subject: Subject, label: int = 0) -> dict:
  """Decodes and checks one subject at its original resolution.

  `label` > 0: a plain folder's masks are label maps and the structure is the pixels
  equal to it.

  Returns:
    {'id': str, 'image': (H, W) uint8, 'left', 'right': (h, w) bool or None,
     'single': (h, w) bool or None, 'dataset', 'finding', 'file': str,
     'height', 'width': int (the original image size)}. Masks have the image's
    size, except JSRT/SCR masks which are half of it (1024 for 2048).

  Raises:
    errors.BadInputError naming the offending file.
  """
  if label and subject.single is None:
    raise errors.ConfigError(f"config.data.label={label} reads label maps from a single mask "
                             "folder (masks/ or masks/<target>/); this layout has masks/left "
                             "and masks/right: set config.data.label=0.")
  image = (_read_folder_image(subject.image) if subject.dataset == "folder"
           else raw.read_image(subject.image))
  if image.size == 0:
    raise errors.BadInputError(subject.image, "image has no pixels.")
  mask_shape = image.shape
  if subject.dataset == "jsrt_scr":
    # SCR masks are drawn at 1024x1024 on the 2048x2048 JSRT images.
    mask_shape = (image.shape[0] // 2, image.shape[1] // 2)
  left = right = single = None
  if subject.merged is not None:
    merged = lungs.check_mask(raw.read_mask_values(subject.merged), subject.merged, mask_shape,
                              image.shape)
    left, right = lungs.split_lungs(merged, subject.merged)
  elif subject.single is not None:
    values = _read_folder_mask(subject.single)
    if label:
      values = images_lib.label_of(values, label, subject.single).astype(np.uint8)
    single = lungs.check_mask(values, subject.single, image.shape)
  else:
    left = lungs.check_mask(raw.read_mask_values(subject.left), subject.left, mask_shape,
                            image.shape)
    right = lungs.check_mask(raw.read_mask_values(subject.right), subject.right, mask_shape,
                             image.shape)
    if (left & right).any():
      raise errors.BadInputError(subject.left, f"left and right lung masks overlap "
                                  f"({int((left & right).sum())} pixels; see {subject.right}).")
    lungs.check_sides(left, right, subject.left)
  return {"id": subject.id, "image": image, "left": left, "right": right, "single": single,
          "dataset": subject.dataset, "finding": subject.finding,
          "file": subject.image.name, "height": int(image.shape[0]),
          "width": int(image.shape[1])}


def _read_folder_image(path: Path) -> np.ndarray:
  """A plain folder's image: PNG/JPEG/TIFF as raw.read_image, DICOM windowed as refine reads
  it, a NIfTI slice by its own range. -> (H, W) uint8."""
  if volumes.is_volume(path):
    return volumes.slice_image(_one_slice(path), 0).pixels
  if images_lib.is_dicom(path):
    return np.rint(images_lib.read_image(path).gray * 255.0).astype(np.uint8)
  return raw.read_image(path)


def _read_folder_mask(path: Path) -> np.ndarray:
  """A plain folder's mask values, (H, W) integer (DICOM and NIfTI slices as stored)."""
  if path.is_file() and volumes.is_volume(path):
    return np.rint(_one_slice(path).data[:, :, 0].T).astype(np.int64)
  if path.is_file() and images_lib.is_dicom(path):
    return np.asarray(images_lib.read_dicom_values(path)).astype(np.int64)
  return raw.read_mask_values(path)


def _one_slice(path: Path) -> volumes.Volume:
  volume = volumes.read_volume(path)
  if volume.data.shape[2] != 1:
    raise errors.BadInputError(path, f"is a volume of {volume.data.shape[2]} slices; a training "
                               "folder takes 2-D files (one slice per NIfTI file): save the "
                               "labelled slices one per file.")
  return volume


def resize_example(example: dict, size: int) -> dict:
  """The example with image and masks resized to (size, size) (see lungs.resize_*)."""
  out = dict(example)
  out["image"] = lungs.resize_image(example["image"], size)
  for key in ("left", "right", "single"):
    if example[key] is not None:
      out[key] = lungs.resize_mask(example[key], size)
      if not out[key].any():
        raise errors.BadInputError(example["file"], f"{key} mask vanishes when resized to "
                                    f"{size}x{size}; it is too small to use.")
  return out


def _nlm_finding(stem: str) -> str:
  return FINDINGS.get(stem.rsplit("_", 1)[-1], "")


def _scan_folder(root: Path, source: str, target: str = "left") -> dict:
  images_dir = root / "images"
  if not images_dir.is_dir():
    raise errors.MissingInputError(f"{images_dir} does not exist; the {source!r} layout is "
                            "images/ + masks/left/ + masks/right/ (or masks/).")
  suffixes = (".png",) if source == "montgomery_team" else FOLDER_SUFFIXES
  masks_dir = root / "masks"
  if source == "folder" and target not in lungs.TARGETS:
    # Any other structure: its own folder, masks/<target>/.
    if not (masks_dir / target).is_dir():
      raise errors.MissingInputError(
          f"{masks_dir / target} does not exist: config.data.target={target!r} names the mask "
          f"folder masks/{target}/ (or use 'left', 'right', 'both' for lungs).")
    masks_dir = masks_dir / target
  two = (masks_dir / "left").is_dir() or (masks_dir / "right").is_dir()
  if source == "montgomery_team" and not two:
    raise errors.MissingInputError(f"{masks_dir}/left and {masks_dir}/right do not exist.")
  if not masks_dir.is_dir():
    raise errors.MissingInputError(f"{masks_dir} does not exist; put masks with the images' file "
                            "names in masks/left/ and masks/right/ (or masks/ for the "
                            "target only).")
  subjects = {}
  for path in raw.list_images(images_dir, suffixes):
    if path.suffix.lower() == ".gz" and not volumes.is_volume(path):
      continue
    sid = file_id(path)
    finding = _nlm_finding(sid) if sid.startswith("MCUCXR") else ""
    if two:
      subjects[sid] = Subject(sid, path, left=_mask_path(masks_dir / "left", sid, path),
                              right=_mask_path(masks_dir / "right", sid, path),
                              finding=finding, dataset=source)
    else:
      subjects[sid] = Subject(sid, path, single=_mask_path(masks_dir, sid, path, MASK_FILES),
                              finding=finding, dataset=source)
  return subjects


def file_id(path: Path) -> str:
  """The id a file names: its name without the suffix (both of `.nii.gz`)."""
  return path.name[:-len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem


def _mask_path(folder: Path, sid: str, image_path: Path, suffixes=raw.MASK_SUFFIXES) -> Path:
  # A path that may not exist: read_subject reports it then, under the skip policy.
  found = (raw.find_with_stem(folder, sid, suffixes) or
           raw.find_with_stem(folder, sid + "_mask", suffixes))
  return found if found is not None else folder / (sid + image_path.name[len(sid):])


def _scan_montgomery_nlm(root: Path, source: str) -> dict:
  if not (root / "CXR_png").is_dir() and (root / "MontgomerySet" / "CXR_png").is_dir():
    root = root / "MontgomerySet"
  cxr = root / "CXR_png"
  if not cxr.is_dir():
    raise errors.MissingInputError(f"{cxr} does not exist; the NLM Montgomery layout is CXR_png/ + "
                            "ManualMask/leftMask/ + ManualMask/rightMask/.")
  return {p.stem: Subject(p.stem, p, left=_mask_path(root / "ManualMask" / "leftMask", p.stem, p),
                          right=_mask_path(root / "ManualMask" / "rightMask", p.stem, p),
                          finding=_nlm_finding(p.stem), dataset=source)
          for p in raw.list_images(cxr, (".png",)) if p.stem.startswith("MCUCXR_")}


def _scan_shenzhen(root: Path, source: str) -> dict:
  cxr = root / "CXR_png"
  if not cxr.is_dir():
    raise errors.MissingInputError(f"{cxr} does not exist; the Shenzhen layout is CXR_png/ + mask/.")
  mask_dirs = [root / d for d in ("mask", "masks", "ManualMask") if (root / d).is_dir()]
  if not mask_dirs:
    raise errors.MissingInputError(f"no lung-mask folder (mask/, masks/ or ManualMask/) in {root}.")
  return {p.stem: Subject(p.stem, p, merged=_mask_path(mask_dirs[0], p.stem, p),
                          finding=_nlm_finding(p.stem), dataset=source)
          for p in raw.list_images(cxr, (".png",)) if p.stem.startswith("CHNCXR_")}


def _scan_jsrt_scr(root: Path, source: str) -> dict:
  images = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".img" and p.is_file())
  side_dirs = {}
  for side in ("left lung", "right lung"):
    side_dirs[side] = sorted(p for p in root.rglob("*") if p.is_dir() and p.name.lower() == side)
    if not side_dirs[side]:
      raise errors.MissingInputError(f"no '{side}/' folder of SCR masks under {root}.")
  index = {side: {p.stem: p for d in dirs for p in d.iterdir() if p.suffix.lower() == ".gif"}
           for side, dirs in side_dirs.items()}
  subjects = {}
  for p in images:
    sid = p.stem.upper()
    finding = "nodule" if sid.startswith("JPCLN") else "normal" if sid.startswith("JPCNN") else ""
    left = index["left lung"].get(p.stem) or side_dirs["left lung"][0] / f"{p.stem}.gif"
    right = index["right lung"].get(p.stem) or side_dirs["right lung"][0] / f"{p.stem}.gif"
    subjects[sid] = Subject(sid, p, left=left, right=right, finding=finding, dataset=source)
  return subjects


def stack_examples(examples: list[dict]) -> dict:
  """Stacks resized examples. -> {'ids': list, 'images': (N,S,S) uint8, 'left', 'right',
  'single': (N,S,S) bool or None}."""
  out = {"ids": [e["id"] for e in examples],
         "images": np.stack([e["image"] for e in examples])}
  for key in ("left", "right", "single"):
    out[key] = (np.stack([e[key] for e in examples])
                if examples and examples[0][key] is not None else None)
  return out
