"""Lung masks: the `LungSet` container, mask checks, resizing, lung separation.

Conventions: images are (H, W) uint8 grayscale; masks are (H, W) bool. "left" is
always the patient's LEFT lung, which in the standard posterior-anterior view
lies on the image's RIGHT side (larger x).
"""
import dataclasses

import numpy as np
from scipy import ndimage
from skimage import transform

from sampot_jax import errors
from sampot_jax.runtime import settings

TARGETS = ("left", "right", "both")
ON_BAD_EXAMPLE = settings.ON_BAD_EXAMPLE


@dataclasses.dataclass(frozen=True)
class LungSet:
  """A split held in memory at one square resolution S.

  Attributes:
    ids: subject ids, e.g. "MCUCXR_0001_0", sorted.
    images: (N, S, S) uint8.
    left: (N, S, S) bool, the patient's left lung (image right side); None with
      target_only.
    right: (N, S, S) bool, the patient's right lung; None with target_only.
    target_only: None when both lungs are known. When the source gave a single
      mask per image (a plain `masks/` or `masks/<target>/` folder) it names the
      one target those masks are ('left', 'right', 'both' or any structure, e.g.
      'heart'); only that target can be asked for.
    single: (N, S, S) bool, the masks of target_only; None without it.
    skipped: the split's bad examples left out under on_bad_example='skip', as
      ((file, problem), ...); empty when none were.
  """
  ids: list[str]
  images: np.ndarray
  left: np.ndarray | None
  right: np.ndarray | None
  target_only: str | None = None
  skipped: tuple = ()
  single: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.ids)
    masks = ("single",) if self.target_only is not None else ("left", "right")
    for name in ("images",) + masks:
      arr = getattr(self, name)
      if arr is None:
        raise ValueError(f"LungSet.{name} is None; it is needed "
                         f"{'with' if self.target_only else 'without'} target_only.")
      if arr.ndim != 3 or arr.shape[0] != n or arr.shape[1:] != self.images.shape[1:]:
        raise ValueError(f"LungSet.{name} has shape {arr.shape}; expected ({n}, S, S) "
                         f"matching images {self.images.shape}.")

  def __len__(self) -> int:
    return len(self.ids)

  def target(self, name: str = "left") -> np.ndarray:
    """The target masks: 'left' (the paper's task) | 'right' | 'both', or the structure of a
    single mask folder. (N, S, S) bool."""
    if self.target_only is not None:
      if name != self.target_only:
        raise errors.ConfigError(
            f"target={name!r} asked of a LungSet read from a single masks/ folder that holds "
            f"the {self.target_only!r} target only; set target={self.target_only!r} or give "
            "masks/left and masks/right.")
      return self.single
    if name not in TARGETS:
      raise errors.ConfigError(f"target={name!r} is not one of {TARGETS}.")
    if name == "left":
      return self.left
    if name == "right":
      return self.right
    return self.left | self.right

  def other_lung(self, name: str = "left") -> np.ndarray | None:
    """The lung that is not the target (for leakage candidates), or None. (N, S, S) bool."""
    if self.target_only is not None or name == "both":
      return None
    return self.right if name == "left" else self.left


def check_mask(raw: np.ndarray, path, shape=None, image_shape=None) -> np.ndarray:
  """Validates a decoded mask and returns it as bool.

  Args:
    raw: (H, W) integer array; allowed values are {0, 1} or {0, 255}.
    path: the file it came from, named in errors.
    shape: (H, W) the mask must have (its image's size), or None.
    image_shape: (H, W) of its image when that differs from `shape` (JSRT/SCR).

  Raises:
    errors.BadInputError: wrong size, values other than 0/1/255, or an empty mask.
  """
  if raw.ndim != 2:
    raise errors.BadInputError(path, f"mask has shape {raw.shape}; expected a 2-D grayscale mask.")
  if shape is not None and tuple(raw.shape) != tuple(shape):
    image_shape = shape if image_shape is None else image_shape
    raise errors.BadInputError(
        path, f"mask is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image is "
        f"{image_shape[1]}x{image_shape[0]}; expected a {shape[1]}x{shape[0]} mask.")
  values = np.unique(raw)
  bad = values[~np.isin(values, (0, 1, 255))]
  if bad.size:
    raise errors.BadInputError(
        path, f"mask has values {bad[:5].tolist()} besides 0/1/255; save it as a binary "
        "0/255 (or 0/1) image, without antialiasing or lossy compression.")
  mask = raw > 0
  if not mask.any():
    raise errors.BadInputError(path, "mask is empty (no foreground pixel).")
  return mask


def check_sides(left: np.ndarray, right: np.ndarray, path) -> None:
  """Raises if the patient's left lung does not lie right of the right lung in the image."""
  lx = np.nonzero(left)[1].mean()
  rx = np.nonzero(right)[1].mean()
  if lx <= rx:
    raise errors.BadInputError(
        path, f"left-lung mask centroid x={lx:.0f} is not right of the right-lung centroid "
        f"x={rx:.0f}; expected the standard view (patient's left lung on the image's right "
        "side). Swap the masks or flip the image.")


def split_lungs(merged: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
  """Splits a two-lung mask into (left, right): the two largest components, left = larger x.

  Args:
    merged: (H, W) bool mask holding both lungs.
    path: the mask file, named in errors.

  Returns:
    (left, right) masks, (H, W) bool. Smaller stray components are dropped: they are
    annotation specks, not lungs.
  """
  labels, n = ndimage.label(merged)
  if n < 2:
    raise errors.BadInputError(
        path, f"merged lung mask has {n} connected component(s); need two (one per lung) "
        "to separate left from right. Give masks/left and masks/right instead.")
  sizes = np.bincount(labels.ravel())[1:]
  a, b = np.argsort(sizes)[::-1][:2] + 1
  if sizes[b - 1] < 0.1 * sizes[a - 1]:
    raise errors.BadInputError(
        path, f"merged lung mask's second-largest component has {sizes[b - 1]} pixels, under "
        f"10% of the largest ({sizes[a - 1]}); the lungs touch or one is missing.")
  mask_a, mask_b = labels == a, labels == b
  if np.nonzero(mask_a)[1].mean() > np.nonzero(mask_b)[1].mean():
    return mask_a, mask_b
  return mask_b, mask_a


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """Antialiased bilinear resize to (size, size). (H, W) uint8 -> (size, size) uint8."""
  if image.shape == (size, size):
    return image
  out = transform.resize(image.astype(np.float32), (size, size), order=1,
                         anti_aliasing=min(image.shape) > size, preserve_range=True)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """Resize by area fraction: a pixel is set when > 1/2 of its area is foreground.

  Uses exact block means for integer downscale factors (512 -> 256) and antialiased
  bilinear on the 0/1 mask thresholded at 1/2 otherwise. (H, W) bool -> (size, size) bool.
  """
  if mask.shape == (size, size):
    return mask.astype(bool)
  h, w = mask.shape
  if h % size == 0 and w % size == 0:
    fh, fw = h // size, w // size
    return mask.reshape(size, fh, size, fw).mean(axis=(1, 3)) > 0.5
  out = transform.resize(mask.astype(np.float32), (size, size), order=1,
                         anti_aliasing=min(mask.shape) > size)
  return out > 0.5
