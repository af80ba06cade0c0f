"""LiteMedSAM's pre- and post-processing (the official CVPR24_LiteMedSAM_infer.py), exactly.

- Images: grayscale replicated to 3 channels, longest side resized to 256 with OpenCV's INTER_AREA
  on the uint8 image (`resize_area`: bit for bit, measured against opencv-python-headless 5.0),
  min-max normalised to [0, 1] over the resized image, zero padded at the bottom/right to
  256x256. No mean/std: that is SAM's.
- Boxes (x0, y0, x1, y1) in original pixels are scaled by 256 / max(H, W), one factor for both
  axes (SAM scales each axis by new/old). The official script also truncates the scaled box to
  integers (`int(box[i] * ratio)`); that is `apply_boxes(..., truncate=True)`, numpy only.
- Masks: the (256, 256) low-res logits are cropped to the resized region, then bilinearly resized
  (torch align_corners=False) to the original size. SAM first upsamples to 1024; LiteMedSAM's
  low-res logits are already at the model's input resolution.

Accepted images are those of `transforms.to_rgb_uint8`: (H, W) or (H, W, 3), uint8 as is, uint16
scaled from the image's own [min, max] to [0, 255] before resizing (the official script asserts
8-bit input; the same rule as the SAM path keeps one behaviour across variants).

This lives beside transforms.py rather than in it: that module reproduces SamPredictor (Pillow,
mean/std); this one reproduces a different script (OpenCV, min-max) and shares its helpers.
`processing.processing_for(config)` picks one of the two per model variant.
"""
import functools

import numpy as np

from sampot_jax.sam import transforms

IMG_SIZE = 256
_DBL_EPSILON = np.finfo(np.float64).eps
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: bilinear weights in 1/2048


# ---------------------------------------------------------------------------------------------
# cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA) for uint8, bit for bit.
# ---------------------------------------------------------------------------------------------

def _area_fast(image: np.ndarray, sx: int, sy: int) -> np.ndarray:
  """Integer factors (sx, sy): the mean of each sx*sy block, rounded as OpenCV's fast path."""
  h, w, c = image.shape
  blocks = image.reshape(h // sy, sy, w // sx, sx, c).astype(np.int32).sum(axis=(1, 3))
  if sx == 2 and sy == 2 and c in (1, 3, 4):
    return ((blocks + 2) >> 2).astype(np.uint8)  # the vectorised 2x2 path: round half up
  # Otherwise float(sum) * float(1 / area) in float32, then cvRound (half to even).
  mean = blocks.astype(np.float32) * (np.float32(1.0) / np.float32(sx * sy))
  return np.clip(np.rint(mean), 0, 255).astype(np.uint8)


def _area_taps(in_size: int, out_size: int, scale: float):
  """OpenCV's fractional-area table for one axis as (out, taps) source indices and float32
  weights, taps in OpenCV's summation order; unused taps have weight 0 (adding 0 is exact)."""
  rows = []
  for d in range(out_size):
    f1 = d * scale
    f2 = f1 + scale
    cell = min(scale, in_size - f1)
    s1, s2 = int(np.ceil(f1)), int(np.floor(f2))
    s2 = min(s2, in_size - 1)
    s1 = min(s1, s2)
    taps = []
    if s1 - f1 > 1e-3:
      taps.append((s1 - 1, np.float32((s1 - f1) / cell)))
    taps += [(s, np.float32(1.0 / cell)) for s in range(s1, s2)]
    if f2 - s2 > 1e-3:
      taps.append((s2, np.float32(min(min(f2 - s2, 1.0), cell) / cell)))
    rows.append(taps)
  width = max(len(t) for t in rows)
  index = np.zeros((out_size, width), np.int64)
  weight = np.zeros((out_size, width), np.float32)
  for d, taps in enumerate(rows):
    for k, (s, a) in enumerate(taps):
      index[d, k], weight[d, k] = s, a
  return index, weight


def _area_fractional(image: np.ndarray, out_h: int, out_w: int, scale_x: float,
                     scale_y: float) -> np.ndarray:
  """Non-integer downscaling: rows resampled horizontally, then weighted rows summed, each sum
  accumulated tap by tap in float32 in OpenCV's order; then cvRound."""
  h, w, c = image.shape
  xi, xw = _area_taps(w, out_w, scale_x)
  yi, yw = _area_taps(h, out_h, scale_y)
  rows = np.zeros((h, out_w, c), np.float32)
  for k in range(xi.shape[1]):  # gather uint8 columns first: large images stay uint8
    tap = np.take(image, xi[:, k], axis=1).astype(np.float32)
    tap *= xw[:, k, None]
    rows += tap
  out = np.zeros((out_h, out_w, c), np.float32)
  for k in range(yi.shape[1]):
    out += yw[:, k, None, None] * rows[yi[:, k]]
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _linear_area_coefficients(in_size: int, out_size: int, scale: float, inv_scale: float,
                              clamp_last: bool):
  """INTER_AREA's bilinear stand-in when enlarging: (out,) first source index and (out, 2)
  int32 weights in 1/2048, as OpenCV computes them. OpenCV pins the last column to weight
  (1, 0) (`clamp_last`) but not the last row: there both taps read the same clamped row."""
  one = 1 << _COEF_BITS
  starts = np.zeros(out_size, np.int64)
  weights = np.zeros((out_size, 2), np.int32)
  for d in range(out_size):
    s = int(np.floor(d * scale))
    f = np.float32((d + 1) - (s + 1) * inv_scale)
    f = np.float32(0) if f <= 0 else np.float32(f - np.float32(np.floor(f)))
    if clamp_last and s >= in_size - 1:
      s, f = in_size - 1, np.float32(0)
    starts[d] = s
    for k, v in enumerate((np.float32(1) - f, f)):
      weights[d, k] = np.clip(np.rint(np.float32(v * np.float32(one))), -32768, 32767)
  return starts, weights


def _area_enlarge(image: np.ndarray, out_h: int, out_w: int, scale_x: float, scale_y: float,
                  inv_x: float, inv_y: float) -> np.ndarray:
  """OpenCV's 8-bit fixed-point bilinear pass used by INTER_AREA when an axis is enlarged."""
  h, w, c = image.shape
  xs, xa = _linear_area_coefficients(w, out_w, scale_x, inv_x, clamp_last=True)
  ys, yb = _linear_area_coefficients(h, out_h, scale_y, inv_y, clamp_last=False)
  src = image.astype(np.int32)
  # Horizontal: exact integers; the last column (and beyond) uses its own pixel times 2048.
  right = np.minimum(xs + 1, w - 1)
  rows = src[:, xs] * xa[:, 0, None] + src[:, right] * xa[:, 1, None]
  rows = rows.reshape(h, out_w * c)
  r0 = rows[np.clip(ys, 0, h - 1)]
  r1 = rows[np.clip(ys + 1, 0, h - 1)]
  b0, b1 = yb[:, 0, None], yb[:, 1, None]
  # Vertical, as OpenCV's vectorised loop computes it: 16-bit products of the values shifted
  # right by 4, their high halves summed, then (x + 2) >> 2. The scalar formula,
  # (S0*b0 + S1*b1 + 2^21) >> 22, rounds differently; OpenCV 5.0 (the pinned test version) uses
  # the vectorised arithmetic for every column, tails included (measured on all widths 1-69).
  out = ((((r0 >> 4) * b0) >> 16) + (((r1 >> 4) * b1) >> 16) + 2) >> 2
  return np.clip(out, 0, 255).astype(np.uint8).reshape(out_h, out_w, c)


def resize_area(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
  """(H, W[, C]) uint8 -> (new_h, new_w[, C]) uint8, equal to
  `cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)`.

  Shrinking by integer factors takes OpenCV's block-mean path, by other factors its
  fractional-area path (float32 sums in OpenCV's order); enlarging (either axis) takes the
  fixed-point bilinear path INTER_AREA falls back to. Same size: a copy. An (H, W, 1) image
  keeps its channel axis (cv2 drops it; the values are the same).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"resize_area takes uint8 images; got {image.dtype}.")
  if image.ndim not in (2, 3):
    raise ValueError(f"resize_area takes (H, W) or (H, W, C) images; got shape {image.shape}.")
  new_h, new_w = int(new_h), int(new_w)
  if new_h < 1 or new_w < 1 or image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f"resize_area cannot resize {image.shape[:2]} to {(new_h, new_w)}: both "
                     "sizes must be at least 1x1.")
  squeeze = image.ndim == 2
  img = image[..., None] if squeeze else image
  h, w = img.shape[:2]
  if (h, w) == (new_h, new_w):
    out = img.copy()
  else:
    # OpenCV derives everything from inv_scale = new / old and scale = 1 / inv_scale, in float64.
    inv_x, inv_y = new_w / w, new_h / h
    scale_x, scale_y = 1.0 / inv_x, 1.0 / inv_y
    isx, isy = int(np.rint(scale_x)), int(np.rint(scale_y))
    integer = abs(scale_x - isx) < _DBL_EPSILON and abs(scale_y - isy) < _DBL_EPSILON
    if scale_x >= 1 and scale_y >= 1:
      if integer:
        out = _area_fast(img, isx, isy)
      else:
        out = _area_fractional(img, new_h, new_w, scale_x, scale_y)
    else:
      out = _area_enlarge(img, new_h, new_w, scale_x, scale_y, inv_x, inv_y)
  return out[..., 0] if squeeze else out


# ---------------------------------------------------------------------------------------------
# Images, prompts and masks in LiteMedSAM's frame.
# ---------------------------------------------------------------------------------------------

def preprocess_shape(h: int, w: int, long_side: int = IMG_SIZE) -> tuple[int, int]:
  """Size after resizing the longest side to `long_side`: int(h * s + 0.5), as the official
  `resize_longest_side` (the same rounding as SAM's)."""
  new_h, new_w = transforms.preprocess_shape(h, w, long_side)
  if new_h < 1 or new_w < 1:
    raise ValueError(f"an image of {h}x{w} (H x W) resizes to {new_h}x{new_w} at longest side "
                     f"{long_side}: a side would vanish. Pad the thin side first.")
  return new_h, new_w


def normalise_min_max(image: np.ndarray) -> np.ndarray:
  """(h, w, 3) uint8 -> float32 in [0, 1]: (x - min) / max(max - min, 1e-8) over the whole
  image, in float64 as the official numpy code, then float32 (a constant image gives 0)."""
  lo, hi = image.min(), image.max()
  spread = max(float(hi) - float(lo), 1e-8)
  return ((image.astype(np.float64) - float(lo)) / spread).astype(np.float32)


def prepare_image(image, img_size: int = IMG_SIZE, name: str = "image"):
  """One image -> (pixels (img_size, img_size, 3) float32 in [0, 1], zero padded at the
  bottom/right; input_size (h, w) after resizing; original_size (H, W))."""
  rgb = transforms.to_rgb_uint8(image, name)
  original_size = rgb.shape[:2]
  input_size = preprocess_shape(*original_size, img_size)
  resized = resize_area(rgb, *input_size)
  pixels = np.zeros((img_size, img_size, 3), np.float32)
  pixels[:input_size[0], :input_size[1]] = normalise_min_max(resized)
  return pixels, input_size, original_size


def prepare_images(images, img_size: int = IMG_SIZE):
  """A batch (B, H, W[, 3]) or a list of same-size images -> ((B, img, img, 3) float32,
  input_size, original_size); each image is normalised by its own min and max."""
  return transforms.prepare_batch(images, functools.partial(prepare_image, img_size=img_size))


def box_scale(original_size: tuple[int, int], img_size: int = IMG_SIZE) -> float:
  """The one factor (float64) from original pixels to the model frame: img_size / max(H, W)."""
  return img_size / max(original_size)


def apply_coords(coords, original_size, img_size: int = IMG_SIZE):
  """(..., 2) (x, y) in original pixels -> model frame; differentiable (jnp) or exact (np:
  float64 product, then float32, as the official numpy -> torch.float path)."""
  scale = box_scale(original_size, img_size)
  if isinstance(coords, np.ndarray):
    return (coords.astype(np.float64) * scale).astype(np.float32)
  return coords * np.float32(scale)


def apply_boxes(boxes, original_size, img_size: int = IMG_SIZE, truncate: bool = False):
  """(..., 4) (x0, y0, x1, y1) in original pixels -> model frame.

  `truncate=True` (numpy only) also drops the fraction, as the official `resize_box_to_256`
  (`int(box[i] * ratio)`) does; the default keeps it, so the jnp path stays differentiable with
  respect to the corners and both paths agree.
  """
  if truncate:
    if not isinstance(boxes, np.ndarray):
      raise ValueError("apply_boxes(truncate=True) takes numpy boxes: truncation has no gradient.")
    scaled = boxes.astype(np.float64) * box_scale(original_size, img_size)
    return np.trunc(scaled).astype(np.float32)
  return apply_coords(boxes, original_size, img_size)


def postprocess_masks(low_res, input_size, original_size, img_size: int = IMG_SIZE):
  """(..., img_size, img_size) low-res logits -> (..., H, W) logits at the original size: crop
  to the resized region, then bilinear (torch, align_corners=False). jit-able, differentiable."""
  if tuple(low_res.shape[-2:]) != (img_size, img_size):
    raise ValueError(f"LiteMedSAM's low-res logits are {img_size}x{img_size} (the input frame); "
                     f"got {tuple(low_res.shape[-2:])}.")
  masks = low_res[..., :input_size[0], :input_size[1]]
  return transforms.resize_bilinear(masks, tuple(original_size))
