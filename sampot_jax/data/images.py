"""A user's own images (and masks) from disk: PNG, JPEG, TIFF (8 or 16 bits) and DICOM.

    found = list_images(path)                 # {name: Path}, a folder (recursive) or one file
    h, w = read_size(found[name])             # header only, nothing decoded
    image = read_image(found[name])           # Image: pixels for SAM, gray for the regressor
    small = to_square(image.gray, side)       # what the regressor sees: padded, then resized

Every image becomes 8 bits (`Image.pixels`, (H, W) or (H, W, 3) uint8), at its own size and
aspect ratio; how its intensities were mapped is said in `Image.intensity`:

- 8-bit PNG/JPEG/TIFF: as stored ("8-bit"). Palette, 1-bit and grey+alpha images become grey,
  RGBA and CMYK RGB (alpha dropped).
- 16-bit (or 32-bit integer or float) PNG/TIFF: the image's own [min, max] linearly onto
  [0, 255] ("range [lo, hi]"); many 16-bit exports use 10-14 of the 16 bits, so the nominal
  depth would leave them nearly black. A constant image becomes 0.
- DICOM (pydicom): the modality LUT first (Rescale Slope/Intercept, or a Modality LUT
  Sequence), then the first VOI LUT Sequence item when there is one ("voi_lut"), else the first
  Window Center/Width with its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID, DICOM PS3.3
  C.11.2.1.2; "window C/W"), else the rescaled image's own range; MONOCHROME1 (higher =
  darker) is then inverted, so that bright is dense in every image. RGB and YBR colour DICOM
  are read as RGB; multi-frame files are refused (one image per file).

Coordinates are those of the picture as a viewer shows it: a PNG/JPEG/TIFF's EXIF orientation
is applied (row 0 at the top of the displayed picture), so a prompt drawn on what the user sees
lands where it was drawn, and masks are written in that frame. A float image with no finite
value is refused; a constant one is read with a warning naming it. Unreadable, truncated or
unsupported files raise errors.BadInputError naming the file.
"""
import dataclasses
from pathlib import Path
import warnings

from absl import logging
import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from sampot_jax import errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
VOLUME_SUFFIXES = (".nii", ".nii.gz")  # NIfTI volumes (data/volumes.py), listed on request


@dataclasses.dataclass(frozen=True)
class Image:
  """One image as read.

  Attributes:
    pixels: (H, W) or (H, W, 3) uint8, what SAM sees (its processing resizes and pads).
    gray: (H, W) float32 in [0, 1], what the regressor sees (before to_square): pixels / 255,
      colour images as luma (ITU-R 601, as PIL's "L").
    intensity: how the stored values became 8 bits (see the module docstring).
  """
  pixels: np.ndarray
  gray: np.ndarray
  intensity: str

  @property
  def size(self) -> tuple[int, int]:
    """(H, W)."""
    return tuple(self.pixels.shape[:2])


# ---------------------------------------------------------------------------------------------
# Finding files.
# ---------------------------------------------------------------------------------------------

def is_dicom(path) -> bool:
  """A .dcm/.dicom suffix, or the 'DICM' magic at byte 128 (DICOM files often lack a suffix)."""
  path = Path(path)
  if path.suffix.lower() in DICOM_SUFFIXES:
    return True
  try:
    with open(path, "rb") as f:
      f.seek(128)
      return f.read(4) == b"DICM"
  except OSError:
    return False


def _is_image_file(path: Path) -> bool:
  suffix = path.suffix.lower()
  if suffix in IMAGE_SUFFIXES:
    return True
  return suffix == "" and is_dicom(path)


def list_images(path, exclude=(), volumes: bool = False) -> dict[str, Path]:
  """{name: file} of the images at `path`: one file, or every image file below a folder.

  A name is the file's path relative to the folder (POSIX separators; for a single file, its
  file name), as the prompts CSV's `file` column gives it. Hidden files and folders (a name
  starting with '.') are ignored, and so is anything below a folder of `exclude` (the run's own
  output folder when it lies inside `path`). Image files: IMAGE_SUFFIXES (any case), and files
  without a suffix that carry the DICOM magic; with `volumes`, NIfTI files too.
  """
  path = Path(path).expanduser()
  if not path.exists():
    raise errors.MissingInputError(f"config.images={str(path)!r} does not exist; give a folder of "
                            "images or one image file.")
  if path.is_file():
    return {path.name: path}
  excluded = [Path(e).expanduser().resolve() for e in exclude]
  found = {}
  for file in sorted(path.rglob("*")):
    rel = file.relative_to(path)
    if any(part.startswith(".") for part in rel.parts) or not file.is_file():
      continue
    resolved = file.resolve()
    if any(resolved.is_relative_to(e) for e in excluded):
      continue
    if _is_image_file(file) or (volumes and file.name.lower().endswith(VOLUME_SUFFIXES)):
      found[rel.as_posix()] = file
  return found


# ---------------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------------

def read_dicom(path, stop_before_pixels: bool = False):
  """A DICOM file's dataset (pydicom); unreadable raises BadInputError naming the file."""
  try:
    import pydicom  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.BadInputError(path, "is DICOM, which needs pydicom: pip install 'pydicom>=2.4'") from e
  try:
    return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
  except Exception as e:  # pylint: disable=broad-except  # pydicom raises many kinds
    raise errors.BadInputError(path, f"cannot be read as DICOM ({type(e).__name__}: {e})") from e


def read_dicom_header(path):
  """A DICOM file's dataset without its pixel data."""
  return read_dicom(path, stop_before_pixels=True)


# Sizes an image may have, checked from its header (read_size) and on reading (read_image):
MIN_SIDE = 16  # narrower, an (H, 3) image reads as one RGB row, and holds too little to segment
MAX_ASPECT = 32  # longest / shortest side: past it the short side nears 8 px of a 256 model frame
# Peak memory grows with the pixel count (refine, measured with configs/refine_tiny.py on a
# 2-core AMD EPYC: 1.3 GB at 6000 x 6000, 2.7 GB at 10000 x 10000, ~30 bytes a pixel); no step
# builds a square of the longest side (to_square), so a long thin image costs what its pixels do.
MAX_PIXELS = 100_000_000


def check_size(path, size: tuple[int, int]) -> tuple[int, int]:
  """size (H, W), or a BadInputError naming the file when it is outside the sizes above."""
  h, w = size
  problem = None
  if min(h, w) < MIN_SIDE:
    problem = f"needs at least {MIN_SIDE} pixels on each side"
  elif h * w > MAX_PIXELS:
    problem = (f"has {h * w:,} pixels, over the {MAX_PIXELS:,} this tool reads (about 3 GB of "
               "memory at that size); downsample it first")
  elif max(h, w) > MAX_ASPECT * min(h, w):
    problem = (f"is over {MAX_ASPECT} times longer than wide; the model would see a sliver: "
               "crop it to the region to segment")
  if problem:
    raise errors.BadInputError(path, f"is {w}x{h} (W x H) and {problem}")
  return h, w


def read_size(path) -> tuple[int, int]:
  """(H, W) as a viewer shows the image (EXIF orientation applied), from the file's header
  without decoding the pixels; sizes outside MIN_SIDE, MAX_PIXELS, MAX_ASPECT are refused."""
  path = Path(path)
  if is_dicom(path):
    ds = read_dicom_header(path)
    try:
      return check_size(path, (int(ds.Rows), int(ds.Columns)))
    except AttributeError as e:
      raise errors.BadInputError(path, "is DICOM without Rows/Columns: it holds no image") from e
  try:
    with PILImage.open(path) as im:
      w, h = im.size
      if w * h > MAX_PIXELS:  # refused here: getexif decodes a PNG's pixels
        check_size(path, (int(h), int(w)))
      if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # turned a quarter
        w, h = h, w
  except errors.BadInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many kinds
    raise errors.BadInputError(path, f"cannot be read as an image ({type(e).__name__}: {e})") from e
  return check_size(path, (int(h), int(w)))


def read_image(path) -> Image:
  """The image at `path` (PNG/JPEG/TIFF/DICOM) as 8 bits; see the module docstring."""
  path = Path(path)
  if not path.is_file():
    raise errors.BadInputError(path, "does not exist")
  pixels, intensity = _read_dicom(path) if is_dicom(path) else _read_pil(path)
  if pixels.shape[0] < 1 or pixels.shape[1] < 1:
    raise errors.BadInputError(path, f"is empty ({pixels.shape[0]}x{pixels.shape[1]} pixels)")
  check_size(path, pixels.shape[:2])
  if intensity == NO_FINITE_VALUE:
    raise errors.BadInputError(path, "holds no finite value (every pixel is NaN or infinite): "
                               "there is nothing to segment")
  if int(pixels.min()) == int(pixels.max()):
    logging.warning("%s is constant (every pixel %d after scaling to 8 bits): the model sees a "
                    "blank image", path, int(pixels.min()))
  return Image(pixels, gray_of(pixels), intensity)


def gray_of(pixels: np.ndarray) -> np.ndarray:
  """(H, W[, 3]) uint8 -> (H, W) float32 in [0, 1]; colour as luma (PIL's "L" conversion)."""
  if pixels.ndim == 3:
    pixels = np.asarray(PILImage.fromarray(pixels, "RGB").convert("L"))
  return pixels.astype(np.float32) / 255.0


NO_FINITE_VALUE = "range [nan, nan]"
EXIF_ORIENTATION = 0x0112


def scale_to_uint8(values: np.ndarray) -> tuple[np.ndarray, str]:
  """The array's own [min, max] linearly onto [0, 255] (a constant array gives 0)."""
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  if not finite.any():
    return np.zeros(values.shape, np.uint8), NO_FINITE_VALUE
  if not finite.all():
    values = np.where(finite, values, np.nan)
  lo, hi = np.nanmin(values), np.nanmax(values)
  if hi <= lo:
    out = np.zeros(values.shape, np.uint8)
  else:
    out = np.rint(np.nan_to_num((values - lo) * (255.0 / (hi - lo)), nan=0.0)).astype(np.uint8)
  return out, f"range [{lo:g}, {hi:g}]"


def _read_pil(path: Path) -> tuple[np.ndarray, str]:
  try:
    with PILImage.open(path) as im:
      frames = getattr(im, "n_frames", 1)
      if frames > 1:
        raise errors.BadInputError(path, f"holds {frames} frames/pages; give one image per file")
      im.load()
      # As a viewer shows it (EXIF orientation applied): the prompts are drawn on that picture,
      # and the outputs are in its frame.
      im = ImageOps.exif_transpose(im)
      mode = im.mode
      if mode in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB",
                  "HSV", "La"):
        if mode == "P":
          im = im.convert("RGBA" if "transparency" in im.info else "RGB")
          mode = im.mode
        if mode in ("1", "L", "LA", "La", "PA"):
          arr = np.asarray(im.convert("L"))
          if _is_gray(arr):
            return arr, "8-bit"
        arr = np.asarray(im.convert("RGB"))
        return (arr[..., 0].copy(), "8-bit") if _is_gray(arr) else (arr, "8-bit")
      arr = np.asarray(im)  # I;16*, I (32-bit int), F (32-bit float)
  except errors.BadInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many kinds
    raise errors.BadInputError(path, f"cannot be read as an image ({type(e).__name__}: {e})") from e
  if arr.ndim != 2:
    raise errors.BadInputError(path, f"has PIL mode {mode} with shape {arr.shape}; expected a grey or "
                         "RGB image")
  return scale_to_uint8(arr)


def _is_gray(arr: np.ndarray) -> bool:
  return arr.ndim == 2 or bool((arr[..., 0] == arr[..., 1]).all() and
                               (arr[..., 0] == arr[..., 2]).all())


# DICOM ----------------------------------------------------------------------------------------

def first_value(value) -> float:
  """A DS/IS value, or the first of several (Window Center may hold one per window)."""
  if not isinstance(value, (int, float, str)):
    value = value[0]
  return float(value)


def window(values: np.ndarray, center: float, width: float,
           function: str = "LINEAR") -> np.ndarray:
  """DICOM PS3.3 C.11.2.1.2 VOI windowing onto [0, 1] (float64).

  LINEAR: 0 below c - 0.5 - (w - 1) / 2, 1 above c - 0.5 + (w - 1) / 2, linear between (w >= 1).
  LINEAR_EXACT: 0 at or below c - w / 2, 1 above c + w / 2, linear between (w > 0).
  SIGMOID: 1 / (1 + exp(-4 (x - c) / w)) (w > 0).
  """
  x = np.asarray(values, np.float64)
  function = (function or "LINEAR").upper()
  if function == "SIGMOID":
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
  if function == "LINEAR_EXACT":
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)
  if function != "LINEAR":
    raise ValueError(f"VOI LUT Function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
  if width <= 1:  # a threshold at c - 0.5
    return (x > center - 0.5).astype(np.float64)
  return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi_lut_item(ds):
  seq = ds.get("VOILUTSequence")
  if seq is None or len(seq) == 0:
    return None
  item = seq[0]
  if "LUTDescriptor" not in item or "LUTData" not in item:
    return None
  return item


def voi_lut(values: np.ndarray, item, ds=None) -> np.ndarray:
  """A VOI LUT Sequence item applied to modality values -> [0, 1] (float64).

  LUT Descriptor (entries, first mapped value, bits): values below the first mapped one take
  the first entry, above the last the last (PS3.3 C.11.2.1.1); the output is divided by
  2**bits - 1. 0 entries means 65536.
  """
  entries, first, bits = (int(v) for v in item.LUTDescriptor)
  entries = entries or 65536
  data = item.LUTData
  if isinstance(data, (bytes, bytearray)):  # OW: 16-bit words in the file's byte order
    little = getattr(ds, "is_little_endian", True) if ds is not None else True
    lut = np.frombuffer(bytes(data), "<u2" if little in (True, None) else ">u2")
  else:
    lut = np.atleast_1d(np.asarray(data, np.float64))
  lut = np.asarray(lut[:entries], np.float64)
  if lut.size == 0:
    raise ValueError("the VOI LUT Sequence item holds no LUT Data")
  index = np.clip(np.rint(values) - first, 0, lut.size - 1).astype(np.int64)
  return np.clip(lut[index] / float(2 ** bits - 1 if bits > 0 else lut.max() or 1), 0.0, 1.0)


def _read_dicom(path: Path) -> tuple[np.ndarray, str]:
  ds = read_dicom(path)
  if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
    raise errors.BadInputError(path, "is DICOM without pixel data (not an image)")
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if frames > 1:
    raise errors.BadInputError(path, f"is a multi-frame DICOM ({frames} frames); give one image per "
                         "file")
  try:
    arr = ds.pixel_array
  except Exception as e:  # pylint: disable=broad-except
    raise errors.BadInputError(path, f"DICOM pixel data cannot be decoded ({type(e).__name__}: {e}); "
                         "compressed transfer syntaxes need pydicom's optional decoders "
                         "(e.g. pip install pylibjpeg pylibjpeg-libjpeg)") from e
  photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
  from pydicom import pixels as dcm_pixels  # pylint: disable=g-import-not-at-top
  if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
    if arr.ndim != 3 or arr.shape[-1] != 3:
      raise errors.BadInputError(path, f"is {photometric} DICOM with pixel shape {arr.shape}")
    if photometric != "RGB":
      arr = dcm_pixels.convert_color_space(arr, photometric, "RGB")
    if arr.dtype == np.uint8:
      return arr, "8-bit RGB"
    return scale_to_uint8(arr)
  if photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise errors.BadInputError(path, f"has Photometric Interpretation {photometric}; readable are "
                         "MONOCHROME1, MONOCHROME2, RGB and YBR_FULL(_422)")
  if arr.ndim != 2:
    raise errors.BadInputError(path, f"is {photometric} DICOM with pixel shape {arr.shape}; expected "
                         "(rows, columns)")
  try:
    values = np.asarray(dcm_pixels.apply_modality_lut(arr, ds), np.float64)
    item = _voi_lut_item(ds)
    if item is not None:
      unit, how = voi_lut(values, item, ds), "voi_lut"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
      center, width = first_value(ds.WindowCenter), first_value(ds.WindowWidth)
      function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
      if width <= 0 or not np.isfinite(width) or not np.isfinite(center):
        warnings.warn(f"{path}: Window Width {width:g} is not > 0; using the image's own range")
        unit, how = None, None
      else:
        unit, how = window(values, center, width, function), f"window {center:g}/{width:g}"
        if function != "LINEAR":
          how += f" {function}"
    else:
      unit, how = None, None
  except errors.BadInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.BadInputError(path, f"DICOM intensity tags cannot be applied ({type(e).__name__}: "
                         f"{e})") from e
  if unit is None:
    out, how = scale_to_uint8(values)
  else:
    out = np.rint(unit * 255.0).astype(np.uint8)
  if photometric == "MONOCHROME1":
    out = 255 - out
    how += ", MONOCHROME1 inverted"
  return out, how


# ---------------------------------------------------------------------------------------------
# Masks and the regressor's square frame.
# ---------------------------------------------------------------------------------------------

# A value that covers at least this share of a mask's pixels (and LABEL_PIXELS) is one of its
# labels; three or more such values make a label map (0/1/2 ...), which no threshold reads
# right. Fewer pixels per value are edges: JPEG noise around 0 and 255, antialiasing, or a soft
# (probability) mask.
LABEL_SHARE = 0.005
LABEL_PIXELS = 16


def read_mask(path, label: int | None = None) -> np.ndarray:
  """A mask image -> (H, W) bool: foreground where the value exceeds half the mask's maximum
  (0/1, 0/255 and 0/65535 masks alike; JPEG noise around 0 and 255 and soft masks read so), or,
  with `label`, where it equals `label`. A label map (three or more values each covering
  LABEL_SHARE of the pixels) without `label` is refused, naming its values. Colour masks are
  read through their luma; an all-zero mask is empty."""
  path = Path(path)
  if not path.is_file():
    raise errors.BadInputError(path, "does not exist")
  if is_dicom(path):
    arr = read_dicom_values(path).astype(np.float64)
  else:
    try:
      with PILImage.open(path) as im:
        im.load()
        if im.mode in ("P", "RGB", "RGBA", "CMYK", "LA", "YCbCr"):
          im = im.convert("L")
        arr = np.asarray(im, np.float64)
    except Exception as e:  # pylint: disable=broad-except
      raise errors.BadInputError(path, f"cannot be read as a mask ({type(e).__name__}: {e})") from e
  if arr.ndim == 3:
    arr = arr[..., 0]
  if arr.ndim != 2:
    raise errors.BadInputError(path, f"has shape {arr.shape}; expected a 2-D mask")
  values, counts = np.unique(arr, return_counts=True)
  labels = values[counts >= max(LABEL_SHARE * arr.size, LABEL_PIXELS)]
  if label is not None:
    return label_of(arr, label, path)
  if len(labels) > 2:
    raise errors.BadInputError(
        path, f"is a label map (values {_some(labels)} each cover over {LABEL_SHARE:.1%} of it): "
        "say which label is the structure (--config.label=N), or save a two-valued mask")
  top = arr.max() if arr.size else 0.0
  if top <= 0:
    return np.zeros(arr.shape, bool)
  return arr > top / 2.0


def label_of(values: np.ndarray, label: int, path) -> np.ndarray:
  """A label map's structure `label` -> bool mask; no pixel of it raises BadInputError naming
  the values the map has."""
  mask = values == label
  if not mask.any():
    raise errors.BadInputError(path, f"has no pixel of label {label}; its values are "
                               f"{_some(np.unique(values))} (set the label to the structure's)")
  return mask


def read_dicom_values(path) -> np.ndarray:
  """A DICOM file's pixel values as stored (a mask or label map), no windowing."""
  ds = read_dicom(path)
  try:
    return np.asarray(ds.pixel_array)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.BadInputError(path, f"DICOM pixel data cannot be decoded ({e})") from e


def _some(values) -> str:
  shown = ", ".join(f"{v:g}" for v in values[:8])
  return shown + (f", ... ({len(values)} values)" if len(values) > 8 else "")


def square_side(size: tuple[int, int]) -> int:
  """The side of the square an (H, W) image is padded to: max(H, W)."""
  return int(max(size))


def to_square(array: np.ndarray, side: int) -> np.ndarray:
  """(H, W) float (an image in [0, 1] or a 0/1 mask) -> (side, side) float32: padded with zeros
  at the bottom and right to a max(H, W) square (as SAM and LiteMedSAM pad), then resized to
  `side` by Pillow's antialiased bilinear filter on a float "F" image (no rounding). The aspect
  ratio is kept: a pixel stays square.

  The padded square is never built: its zeros add nothing to the filter's sums, so each pass
  reads only the image's own rows and columns (memory ~ H x side + side x side floats, not
  max(H, W)^2: a 250 x 25000 image would need 2.5 GB for the square). The result equals
  Pillow's on the square to float32 rounding (tests/test_images.py measures it).
  """
  array = np.asarray(array, np.float32)
  if array.ndim != 2:
    raise ValueError(f"to_square takes an (H, W) array; got shape {array.shape}.")
  n = square_side(array.shape)
  if n == side:
    padded = np.zeros((n, n), np.float32)
    padded[:array.shape[0], :array.shape[1]] = array
    return padded
  h, w = array.shape
  windows = _bilinear_windows(n, side)
  # Pillow's order: along each row first, rounded to float32, then down each column.
  rows = np.zeros((h, side), np.float32)
  for j, (lo, weights) in enumerate(windows):
    hi = min(lo + len(weights), w)
    if hi > lo:
      rows[:, j] = array[:, lo:hi] @ weights[:hi - lo]
  out = np.zeros((side, side), np.float32)
  for i, (lo, weights) in enumerate(windows):
    hi = min(lo + len(weights), h)
    if hi > lo:
      out[i, :] = weights[:hi - lo] @ rows[lo:hi, :]
  return out


def _bilinear_windows(n: int, side: int) -> list[tuple[int, np.ndarray]]:
  """For each of `side` outputs resampling `n` inputs: (first input index, float64 weights), the
  antialiased triangle filter as Pillow computes it (support widened by the scale when
  shrinking; window bounds rounded half up, clipped to the input; weights normalised to sum 1
  over the clipped window, so the padding's zeros count in the normalisation)."""
  scale = n / side
  filter_scale = max(scale, 1.0)
  support = filter_scale  # the triangle's support is 1 input pixel, widened when shrinking
  windows = []
  for j in range(side):
    center = (j + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n)
    taps = np.arange(lo, hi, dtype=np.float64)
    weights = np.maximum(1.0 - np.abs((taps - center + 0.5) / filter_scale), 0.0)
    total = weights.sum()
    windows.append((lo, weights / total if total != 0.0 else weights))
  return windows
