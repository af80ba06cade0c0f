"""A DICOM series (a folder of single-frame slices of one Series Instance UID) read as a volume.

    series = read_header(folder)   # Series: files in slice order, (X, Y, Z), affine; headers only
    data, window, invert = read_values(series)   # (X, Y, Z) float32 modality values

The folder's own files (not its subfolders; hidden files ignored) that are DICOM are the series.
Voxel (x, y, z) is column x, row y of the z-th slice, slices ordered by their position along the
slice normal (row direction x column direction of Image Orientation (Patient)): slice 0 lies
lowest along it, as NIfTI converters usually order them. The affine maps voxels to RAS+ mm (the
NIfTI convention; DICOM's patient frame is LPS+, hence the sign of the first two rows), from
Image Position/Orientation (Patient) and Pixel Spacing; a mask volume written with it overlays
the series in a NIfTI viewer. Without Image Position/Orientation the slices are ordered by
Instance Number and the affine is a plain grid (a warning says so).

Intensities: each slice's modality LUT (Rescale Slope/Intercept), then one window for the whole
series (the middle slice's first Window Center/Width, as a 2-D DICOM is read), or without one the
volume's own range, so a structure keeps its brightness from slice to slice.
"""
import dataclasses
from pathlib import Path
import warnings

import numpy as np

from sampot_jax import errors
from sampot_jax.data import images as images_lib

# Positions within this (mm) are one position; spacings may vary by this share of their mean
# (scanners write positions rounded to ~1e-3 mm; a missing slice doubles one gap).
SAME_POSITION_MM = 1e-3
SPACING_SPREAD = 0.01
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class Series:
  """A series' files in slice order, its shape (X columns, Y rows, Z slices), its voxel -> RAS+
  mm affine (4, 4) and its Series Instance UID."""
  folder: Path
  files: tuple
  shape: tuple
  affine: np.ndarray
  uid: str


def is_series(path) -> bool:
  """A folder: refine reads a folder named in the prompts CSV as a DICOM series."""
  return Path(path).is_dir()


def series_files(folder: Path) -> list[Path]:
  files = sorted(f for f in folder.iterdir()
                 if f.is_file() and not f.name.startswith(".") and images_lib.is_dicom(f))
  if not files:
    raise errors.BadInputError(folder, "is a folder without DICOM files; a DICOM series is a "
                               "folder of its slices, one file each")
  return files


def _floats(ds, name: str, n: int):
  value = ds.get(name)
  if value is None:
    return None
  try:
    out = np.array([float(v) for v in value], np.float64)
  except (TypeError, ValueError):
    return None
  return out if out.size == n and np.all(np.isfinite(out)) else None


def read_header(folder) -> Series:
  """The series in `folder` from its files' headers (no pixel data decoded); a folder of several
  series, mixed slice sizes or orientations, multi-frame files, two slices at one position or
  uneven slice gaps raise BadInputError naming the folder and the fix."""
  folder = Path(folder)
  files = series_files(folder)
  headers = [images_lib.read_dicom_header(f) for f in files]
  uids = {}
  for f, ds in zip(files, headers):
    uids.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(f.name)
  if len(uids) > 1:
    listed = "; ".join(f"{uid or '(none)'}: {len(names)} file(s), e.g. {names[0]}"
                       for uid, names in sorted(uids.items(), key=lambda kv: -len(kv[1])))
    raise errors.BadInputError(folder, f"holds {len(uids)} DICOM series ({listed}); put each "
                               "series in a folder of its own")
  for f, ds in zip(files, headers):
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
      raise errors.BadInputError(folder, f"{f.name} is a multi-frame DICOM ({frames} frames); a "
                                 "series folder holds one slice per file")
  sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in headers}
  if len(sizes) > 1:
    raise errors.BadInputError(folder, f"its slices differ in size (rows x columns: "
                               f"{sorted(sizes)}); one series has one slice size")
  rows, columns = sizes.pop()
  images_lib.check_size(folder, (rows, columns))
  spacing = _floats(headers[0], "PixelSpacing", 2)
  if spacing is None:
    warnings.warn(f"{folder}: no Pixel Spacing; the mask volume's voxels are 1 mm")
    spacing = np.ones(2)
  orientations = [_floats(ds, "ImageOrientationPatient", 6) for ds in headers]
  positions = [_floats(ds, "ImagePositionPatient", 3) for ds in headers]
  if any(o is None for o in orientations) or any(p is None for p in positions):
    order, affine = _without_geometry(folder, files, headers, spacing)
  else:
    order, affine = _with_geometry(folder, files, orientations, positions, spacing)
  return Series(folder, tuple(files[i] for i in order), (columns, rows, len(files)), affine,
                next(iter(uids)))


def _with_geometry(folder, files, orientations, positions, spacing):
  iop = orientations[0]
  if any(np.abs(o - iop).max() > 1e-4 for o in orientations):
    raise errors.BadInputError(folder, "its slices differ in Image Orientation (Patient); one "
                               "series has one orientation")
  x_dir, y_dir = iop[:3], iop[3:]
  normal = np.cross(x_dir, y_dir)
  along = np.array([p @ normal for p in positions])
  order = np.argsort(along, kind="stable")
  gaps = np.diff(along[order])
  if gaps.size and gaps.min() < SAME_POSITION_MM:
    i = int(np.argmin(gaps))
    raise errors.BadInputError(folder, f"{files[order[i]].name} and {files[order[i + 1]].name} "
                               "lie at the same position; a series holds each slice once")
  if gaps.size and gaps.max() - gaps.min() > SPACING_SPREAD * gaps.mean() + SAME_POSITION_MM:
    raise errors.BadInputError(folder, f"its slice gaps range from {gaps.min():.3g} to "
                               f"{gaps.max():.3g} mm (a missing slice?); a volume needs even gaps "
                               "(refine the files as 2-D images instead)")
  first, last = positions[order[0]], positions[order[-1]]
  step = (last - first) / (len(files) - 1) if len(files) > 1 else normal
  lps = np.eye(4)
  # Pixel Spacing is (between rows, between columns): x (a column index) moves by the second.
  lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = x_dir * spacing[1], y_dir * spacing[0], step, first
  return order, LPS_TO_RAS @ lps


def _without_geometry(folder, files, headers, spacing):
  numbers = [ds.get("InstanceNumber") for ds in headers]
  if any(n is None for n in numbers):
    raise errors.BadInputError(folder, "its files carry neither Image Position (Patient) nor "
                               "Instance Number: their slice order is unknown")
  order = np.argsort([int(n) for n in numbers], kind="stable")
  thickness = _floats(headers[0], "SpacingBetweenSlices", 1)
  if thickness is None:
    thickness = _floats(headers[0], "SliceThickness", 1)
  dz = float(thickness[0]) if thickness is not None else 1.0
  warnings.warn(f"{folder}: no Image Position/Orientation (Patient); slices ordered by Instance "
                f"Number, the mask volume's affine a plain grid of {spacing[1]:g} x "
                f"{spacing[0]:g} x {dz:g} mm")
  return order, LPS_TO_RAS @ np.diag([spacing[1], spacing[0], dz, 1.0])


def read_values(series: Series):
  """(X, Y, Z) float32 modality values of the series, its window ((center, width, function) of
  the middle slice, or None) and whether it is MONOCHROME1 (higher = darker)."""
  from pydicom import pixels as dcm_pixels  # pylint: disable=g-import-not-at-top
  data = np.empty(series.shape, np.float32)
  photometrics, middle = set(), None
  for z, f in enumerate(series.files):
    ds = images_lib.read_dicom(f)
    if z == len(series.files) // 2:
      middle = ds  # its window is the series' (read here, not again)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
      raise errors.BadInputError(series.folder, f"{f.name} is {photometric}; a series volume "
                                 "takes grey slices (MONOCHROME1 or MONOCHROME2)")
    photometrics.add(photometric)
    try:
      values = dcm_pixels.apply_modality_lut(ds.pixel_array, ds)
    except Exception as e:  # pylint: disable=broad-except  # pydicom raises many kinds
      raise errors.BadInputError(series.folder, f"{f.name}: pixel data cannot be decoded "
                                 f"({type(e).__name__}: {e})") from e
    data[:, :, z] = np.asarray(values, np.float32).T
  if len(photometrics) > 1:
    raise errors.BadInputError(series.folder, "mixes MONOCHROME1 and MONOCHROME2 slices")
  window = None
  if "WindowCenter" in middle and "WindowWidth" in middle:
    center, width = images_lib.first_value(middle.WindowCenter), images_lib.first_value(
        middle.WindowWidth)
    if np.isfinite(center) and np.isfinite(width) and width > 0:
      window = (center, width, str(middle.get("VOILUTFunction", "LINEAR") or "LINEAR").upper())
  return data, window, photometrics == {"MONOCHROME1"}


def fold_series(found: dict, root, names) -> dict:
  """`found` ({name: Path} of images.list_images under `root`) with every name in `names` that
  is a folder under `root` as one entry (a series), the files inside it no longer listed."""
  root = Path(root).expanduser()
  if not root.is_dir():
    return found
  inside = root.resolve()
  folders = {name: root / name for name in set(names)
             if name and (root / name).is_dir() and (root / name).resolve().is_relative_to(inside)
             and (root / name).resolve() != inside}
  kept = {name: path for name, path in found.items()
          if not any(name.startswith(folder + "/") for folder in folders)}
  return {**kept, **folders}
