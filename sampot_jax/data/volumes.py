"""3-D volumes (NIfTI, .nii / .nii.gz, read with nibabel) as stacks of 2-D slices for refine.

    shape = read_shape(path)                 # (X, Y, Z) voxels, from the header only
    volume = read_volume(path)               # Volume: the data and the image it came from
    image = slice_image(volume, z)           # images.Image of slice z: (Y, X), like a 2-D file
    write_mask(out_path, masks, path)        # (X, Y, Z) bool -> NIfTI with the input's affine

Slices are taken along the third voxel axis (k; axial for the usual RAS+ or LAS volumes). In a
slice, x is the first voxel index (i) and y the second (j): a prompt (x, y) on slice z is voxel
(x, y, z), `data[x, y, z]` in nibabel, whatever the orientation the affine gives it. Intensities
become 8 bits by the whole volume's finite [min, max] (one scale for every slice, so a structure
keeps its brightness from slice to slice). The mask volume is written with the input's affine
and header (its data type set to uint8, no scaling): it overlays the input in any viewer.

A folder is read as a DICOM series (data/dicom_series.py: its slices ordered along the slice
normal, the series' window or its range); its mask volume is a NIfTI with the series' voxel ->
RAS+ affine.
"""
import dataclasses
import os
from pathlib import Path

import numpy as np

from sampot_jax import errors
from sampot_jax.data import dicom_series
from sampot_jax.data import images as images_lib

def is_volume(path) -> bool:
  """A NIfTI file (by its name) or a DICOM series folder."""
  return str(path).lower().endswith(images_lib.VOLUME_SUFFIXES) or dicom_series.is_series(path)


@dataclasses.dataclass(frozen=True)
class Volume:
  """A volume as read: `data` (X, Y, Z) as stored (scaled by the header, or a DICOM series'
  modality values), `lo`, `hi` its finite range, `nifti` the nibabel image (affine, header;
  None for a series), `window` a series' (center, width, function) or None (then [lo, hi]),
  `invert` a MONOCHROME1 series."""
  path: Path
  data: np.ndarray
  lo: float
  hi: float
  nifti: object = None
  window: tuple | None = None
  invert: bool = False


def _load(path: Path):
  import nibabel  # pylint: disable=g-import-not-at-top  # only volumes need it
  try:
    return nibabel.load(str(path))
  except Exception as e:  # pylint: disable=broad-except  # nibabel raises many kinds
    raise errors.BadInputError(path, f"cannot be read as NIfTI ({type(e).__name__}: {e})") from e


def _shape3(path: Path, shape) -> tuple[int, int, int]:
  shape = tuple(int(s) for s in shape)
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) == 2:  # a 2-D NIfTI: one slice
    shape = shape + (1,)
  if len(shape) != 3:
    raise errors.BadInputError(path, f"holds a {len(shape)}-D image of shape {shape}; refine "
                               "takes 3-D volumes (one time point: split 4-D series first)")
  images_lib.check_size(path, (shape[1], shape[0]))  # a slice: Y rows, X columns
  return shape


def read_shape(path) -> tuple[int, int, int]:
  """(X, Y, Z) of a volume from its headers (nothing decoded)."""
  path = Path(path)
  if dicom_series.is_series(path):
    return dicom_series.read_header(path).shape
  return _shape3(path, _load(path).shape)


def read_volume(path) -> Volume:
  """The volume at `path`; an unreadable, non-3-D or all-NaN one raises BadInputError."""
  path = Path(path)
  if dicom_series.is_series(path):
    data, window, invert = dicom_series.read_values(dicom_series.read_header(path))
    return Volume(path, data, float(data.min()), float(data.max()), None, window, invert)
  nifti = _load(path)
  shape = _shape3(path, nifti.shape)
  try:
    data = np.asarray(nifti.dataobj, dtype=np.float32).reshape(shape)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.BadInputError(path, f"cannot be read as NIfTI ({type(e).__name__}: {e})") from e
  finite = data[np.isfinite(data)]
  if finite.size == 0:
    raise errors.BadInputError(path, "holds no finite value: there is nothing to segment")
  return Volume(path, data, float(finite.min()), float(finite.max()), nifti)


def slice_image(volume: Volume, z: int) -> images_lib.Image:
  """Slice z as an Image (Y rows, X columns): 8 bits by the series' window, else the volume's
  [lo, hi]."""
  values = np.nan_to_num(volume.data[:, :, z].T, nan=volume.lo)
  if volume.window is not None:
    center, width, function = volume.window
    scaled = images_lib.window(values, center, width, function) * 255.0
    how = f"series window {center:g}/{width:g}"
  else:
    span = volume.hi - volume.lo
    scaled = (values - volume.lo) * (255.0 / span if span > 0 else 0)
    how = f"volume range [{volume.lo:g}, {volume.hi:g}]"
  pixels = np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
  if volume.invert:
    pixels, how = 255 - pixels, how + ", MONOCHROME1 inverted"
  return images_lib.Image(pixels, images_lib.gray_of(pixels), f"{how}, slice {z}")


def write_mask(path, masks: np.ndarray, source) -> Path:
  """(X, Y, Z) bool -> a uint8 0/1 NIfTI at `path` with the affine and header of the volume
  at `source` (its header only is read), or a DICOM series' affine (qform and sform, scanner
  coordinates); temporary file, then rename."""
  import nibabel  # pylint: disable=g-import-not-at-top
  path = Path(path)
  if dicom_series.is_series(source):
    series = dicom_series.read_header(source)
    out = nibabel.Nifti1Image(masks.astype(np.uint8), series.affine)
    out.header.set_qform(series.affine, code=1)
    out.header.set_sform(series.affine, code=1)
    out.header.set_xyzt_units("mm")
    out.header["descrip"] = f"sampot mask, DICOM series {series.uid}"[:79].encode()
  else:
    like = _load(Path(source))
    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    out = type(like)(masks.astype(np.uint8), like.affine, header)
  out.header.set_slope_inter(1.0, 0.0)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{os.getpid()}.{path.name}")  # keeps .nii.gz: nibabel picks by name
  try:
    nibabel.save(out, str(tmp))
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path
