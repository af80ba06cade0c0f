"""The official SamPredictor's pre- and post-processing, reproduced bit for bit where it can be.

- Images: longest side resized to 1024 with Pillow's antialiased bilinear filter, in Pillow's own
  8-bit fixed-point arithmetic (the official code resizes through PIL), so the resized uint8 image
  is identical; then (x - mean) / std and zero padding at the bottom/right to 1024x1024.
- Coordinates (x, y) in original pixels are scaled into the resized frame.
- Masks: low-res logits -> bilinear (align_corners=False) to 1024 -> crop -> bilinear to the
  original size, with torch's float32 sampling positions, as matrices.

Accepted images: (H, W, 3) RGB or (H, W) grayscale (replicated to 3 channels); uint8 as is;
uint16 scaled linearly from the image's own [min, max] to [0, 255] (16-bit radiographs rarely
use the full range, so a fixed /257 would leave them nearly black).
"""
import functools

import jax.numpy as jnp
import numpy as np

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling


def preprocess_shape(h: int, w: int, long_side: int = 1024) -> tuple[int, int]:
  """Size after resizing the longest side to `long_side`, rounded as the official code does."""
  scale = long_side * 1.0 / max(h, w)
  return int(h * scale + 0.5), int(w * scale + 0.5)


def _pil_bilinear_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pillow's bilinear taps for one axis: (out, ksize) int32 fixed-point weights, (out,) starts."""
  scale = in_size / out_size
  filterscale = max(scale, 1.0)  # antialiasing: the filter widens when shrinking
  support = 1.0 * filterscale
  ksize = int(np.ceil(support)) * 2 + 1
  weights = np.zeros((out_size, ksize), np.float64)
  starts = np.zeros(out_size, np.int64)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size) - xmin
    x = np.arange(xmax)
    w = np.maximum(1.0 - np.abs((x + xmin - center + 0.5) / filterscale), 0.0)
    total = w.sum()
    weights[xx, :xmax] = w / total if total != 0.0 else w
    starts[xx] = xmin
  fixed = np.where(weights < 0, -0.5, 0.5) + weights * (1 << _PRECISION_BITS)
  return np.trunc(fixed).astype(np.int64), starts


def _pil_resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
  """One 8-bit resampling pass of Pillow along `axis` of a uint8 (H, W, C) array."""
  in_size = image.shape[axis]
  weights, starts = _pil_bilinear_coefficients(in_size, out_size)
  ksize = weights.shape[1]
  taps = np.minimum(starts[:, None] + np.arange(ksize), in_size - 1)  # zero weights past the end
  moved = np.moveaxis(image, axis, 0).astype(np.int64)  # (in, other, C)
  acc = np.full((out_size,) + moved.shape[1:], 1 << (_PRECISION_BITS - 1), np.int64)
  for k in range(ksize):
    acc += moved[taps[:, k]] * weights[:, k].reshape((-1,) + (1,) * (moved.ndim - 1))
  out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
  return np.moveaxis(out, 0, axis)


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W, C) uint8 -> (h, w, C) uint8, equal to PIL `Image.resize((w, h), BILINEAR)`."""
  h, w = size
  if image.shape[:2] == (h, w):
    return image.copy()
  # Pillow resamples horizontally first, then vertically, rounding to uint8 after each pass.
  if image.shape[1] != w:
    image = _pil_resample_axis(image, w, axis=1)
  if image.shape[0] != h:
    image = _pil_resample_axis(image, h, axis=0)
  return image


def to_rgb_uint8(image, name: str = "image") -> np.ndarray:
  """Validates one image and returns it as (H, W, 3) uint8 (see the module docstring)."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
    raise ValueError(f"{name} has shape {image.shape}; expected (H, W) grayscale or (H, W, 3) RGB "
                     "(channels last). Convert RGBA to RGB and move channels to the last axis.")
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise ValueError(f"{name} is empty (shape {image.shape}); pass an image with pixels.")
  if image.dtype == np.uint16:
    lo, hi = int(image.min()), int(image.max())
    scaled = (image.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1))
    image = np.round(scaled).astype(np.uint8)
  elif image.dtype != np.uint8:
    if np.issubdtype(image.dtype, np.floating) and np.isnan(image).any():
      raise ValueError(f"{name} contains NaN values; clean or mask them before segmenting.")
    raise ValueError(f"{name} has dtype {image.dtype}; expected uint8 or uint16. Scale float images "
                     "to [0, 255] and cast with .astype(np.uint8).")
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return image


def prepare_image(image, img_size: int = 1024, name: str = "image"):
  """One image -> (pixels (img_size, img_size, 3) float32, input_size (h, w), original_size (H, W))."""
  rgb = to_rgb_uint8(image, name)
  original_size = rgb.shape[:2]
  input_size = preprocess_shape(*original_size, img_size)
  resized = resize_uint8(rgb, input_size)
  pixels = np.zeros((img_size, img_size, 3), np.float32)
  pixels[:input_size[0], :input_size[1]] = (resized.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
  return pixels, input_size, original_size


def prepare_images(images, img_size: int = 1024):
  """A batch (B, H, W[, 3]) or a list of same-size images -> ((B, img, img, 3) float32, input_size,
  original_size). Mixed sizes are refused: one compiled call serves one image size."""
  return prepare_batch(images, functools.partial(prepare_image, img_size=img_size))


def prepare_batch(images, prepare_one):
  """Runs `prepare_one(image, name=...) -> (pixels, input_size, original_size)` over a batch
  and stacks the pixels; the batch checks shared by every model variant's preprocessing."""
  if isinstance(images, np.ndarray) and images.ndim in (2, 3) and not (
      images.ndim == 3 and images.shape[-1] not in (1, 3)):
    raise ValueError(f"images has shape {images.shape}: that is one image; pass a batch "
                     "(B, H, W[, 3]) or a list (e.g. images[None]).")
  if len(images) == 0:
    raise ValueError("images is an empty batch; pass at least one image.")
  prepared = [prepare_one(im, name=f"images[{i}]") for i, im in enumerate(images)]
  sizes = sorted({p[2] for p in prepared})
  if len(sizes) > 1:
    raise ValueError(f"images mixes sizes {sizes}; a batch must share one (H, W). Group the images "
                     "by size, or resize/pad them to one size first.")
  return np.stack([p[0] for p in prepared]), prepared[0][1], prepared[0][2]


def coords_scale(original_size: tuple[int, int], img_size: int = 1024) -> np.ndarray:
  """(2,) float32 factors (x, y) from original pixels to the resized model frame."""
  old_h, old_w = original_size
  new_h, new_w = preprocess_shape(old_h, old_w, img_size)
  # float64 factors first, as the official numpy code computes them.
  return np.array([new_w / old_w, new_h / old_h], np.float64)


def apply_coords(coords, original_size, img_size: int = 1024):
  """(..., 2) (x, y) in original pixels -> model frame; differentiable (jnp) or exact (np)."""
  scale = coords_scale(original_size, img_size)
  if isinstance(coords, np.ndarray):
    return (coords.astype(np.float64) * scale).astype(np.float32)
  return coords * scale.astype(np.float32)


def apply_boxes(boxes, original_size, img_size: int = 1024):
  """(..., 4) (x0, y0, x1, y1) in original pixels -> model frame."""
  shape = boxes.shape
  return apply_coords(boxes.reshape(shape[:-1] + (2, 2)), original_size, img_size).reshape(shape)


@functools.lru_cache(maxsize=64)
def _torch_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) float32 weights of torch's bilinear interpolation, align_corners=False, no antialias."""
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  # torch's compiled kernel fuses scale * (i + 0.5) - 0.5 into one rounding (an FMA); the exact
  # float64 product of two float32 numbers, rounded once to float32, is the same number.
  src = (np.float64(scale) * (np.arange(out_size, dtype=f32) + f32(0.5)) - 0.5).astype(f32)
  src = np.maximum(src, f32(0))
  i0 = src.astype(np.int64)
  i1 = i0 + (i0 < in_size - 1)
  lam1 = np.clip(src - i0.astype(f32), 0, 1).astype(f32)
  lam0 = (f32(1) - lam1).astype(f32)
  matrix = np.zeros((out_size, in_size), f32)
  rows = np.arange(out_size)
  matrix[rows, i0] += lam0
  matrix[rows, i1] += lam1
  return matrix


def resize_bilinear(x, size: tuple[int, int]):
  """(..., h, w) -> (..., H, W) as torch F.interpolate(bilinear, align_corners=False)."""
  wy = jnp.asarray(_torch_bilinear_matrix(x.shape[-2], size[0]))
  wx = jnp.asarray(_torch_bilinear_matrix(x.shape[-1], size[1]))
  x = jnp.einsum("...hw,Ww->...hW", x, wx, precision="highest")
  return jnp.einsum("...hW,Hh->...HW", x, wy, precision="highest")


def postprocess_masks(low_res, input_size, original_size, img_size: int = 1024):
  """(..., 256, 256) logits -> (..., H, W) logits at the original image size."""
  masks = resize_bilinear(low_res, (img_size, img_size))
  masks = masks[..., :input_size[0], :input_size[1]]
  return resize_bilinear(masks, tuple(original_size))
