"""Decoding raw image and mask files into numpy arrays.

Images come back as (H, W) uint8 grayscale. 16-bit PNG/TIFF images are scaled to
uint8 by their own min/max (many 16-bit exports use only 10-14 of the 16 bits, so
scaling by the nominal bit depth would leave them nearly black). JSRT `.IMG` files
are scaled by their known 12-bit depth and inverted (JSRT stores larger = darker).
"""
from pathlib import Path

import numpy as np
from PIL import Image
from sampot_jax import errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
JSRT_SHAPE = (2048, 2048)
JSRT_BITS = 12


def read_image(path) -> np.ndarray:
  """Reads a grayscale radiograph (PNG/JPEG/TIFF, 8/16-bit, or JSRT .IMG). -> (H, W) uint8."""
  path = Path(path)
  if not path.is_file():
    raise errors.BadInputError(path, "image file does not exist.")
  if path.suffix.lower() == ".img":
    return read_jsrt_img(path)
  arr = _decode(path, "image")
  if arr.ndim == 3:
    # Colour-saved radiographs: luminance, as PIL's 'L' conversion does.
    rgb = arr[..., :3].astype(np.float32)
    arr = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == bool:
    return arr.astype(np.uint8) * 255
  return scale_to_uint8(arr)


def scale_to_uint8(arr: np.ndarray) -> np.ndarray:
  """Linear map of the image's own [min, max] to [0, 255]. (H, W) any -> (H, W) uint8."""
  arr = arr.astype(np.float64)
  lo, hi = arr.min(), arr.max()
  if hi <= lo:
    return np.zeros(arr.shape, np.uint8)
  return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_jsrt_img(path) -> np.ndarray:
  """Reads a JSRT 2048x2048 12-bit big-endian raw file. -> (2048, 2048) uint8, lungs dark."""
  path = Path(path)
  expected = JSRT_SHAPE[0] * JSRT_SHAPE[1] * 2
  size = path.stat().st_size
  if size != expected:
    raise errors.BadInputError(
        path, f"JSRT .IMG file has {size} bytes; expected {expected} (2048x2048 pixels, "
        "16-bit big-endian words). The file is truncated or not a JSRT image.")
  raw = np.fromfile(path, dtype=">u2").reshape(JSRT_SHAPE)
  top = (1 << JSRT_BITS) - 1
  if raw.max() > top:
    raise errors.BadInputError(path, f"JSRT .IMG has values up to {raw.max()}, over 12 bits.")
  scaled = np.rint(raw.astype(np.float32) * (255.0 / top)).astype(np.uint8)
  return 255 - scaled


def read_mask_values(path) -> np.ndarray:
  """Reads a mask file's raw values (palette images as gray levels). -> (H, W) integer."""
  path = Path(path)
  if not path.is_file():
    raise errors.BadInputError(path, "mask file does not exist; every image needs its mask "
                          "(same file name) or set on_bad_example='skip'.")
  arr = _decode(path, "mask")
  if arr.ndim == 3:
    if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(3, arr.shape[-1]))):
      raise errors.BadInputError(path, "mask is a colour image with differing channels; save it "
                            "as a single-channel 0/255 image.")
    arr = arr[..., 0]
  if arr.dtype == bool:
    arr = arr.astype(np.uint8)
  return arr


def _decode(path: Path, what: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
      if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.array(im).astype(np.uint16)
      if im.mode == "I":
        return np.array(im)
      if im.mode in ("RGBA", "LA"):
        im = im.convert("RGB") if im.mode == "RGBA" else im.convert("L")
      if im.mode == "CMYK" or im.mode == "YCbCr":
        im = im.convert("RGB")
      return np.array(im)
  except (OSError, ValueError, SyntaxError) as e:
    raise errors.BadInputError(path, f"cannot be decoded as an {what} ({type(e).__name__}: {e}); "
                          "the file is corrupt or not a PNG/JPEG/TIFF/GIF.") from e


def find_with_stem(folder, stem: str, suffixes=MASK_SUFFIXES) -> Path | None:
  """The file in `folder` named `stem` + one of `suffixes` (case-insensitive), or None."""
  folder = Path(folder)
  for suffix in suffixes:
    for cand in (stem + suffix, stem + suffix.upper()):
      p = folder / cand
      if p.is_file():
        return p
  return None


def list_images(folder, suffixes=IMAGE_SUFFIXES) -> list[Path]:
  """Image files directly in `folder`, sorted by name, hidden files skipped."""
  folder = Path(folder)
  return sorted(p for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))

