"""Stand-ins for a user's prompt, made from the ground truth: what a clinician would draw.

    boxes = rough_boxes(bounding_boxes(targets), jitter=0.15, rng=np.random.default_rng(0))

A rough box is the ground-truth bounding box with each coordinate moved uniformly by up to
+-jitter of the box's width (x) or height (y): the box a hurried user draws, as the mask's
centroid stands in for a user's click (the paper). Boxes are (x0, y0, x1, y1) in pixels.
"""
import numpy as np


def mask_pixels(masks: np.ndarray, ids, what: str, fix: str):
  """Yields (i, xs, ys): the pixel coordinates of each (N, H, W) mask; an empty mask is an
  error naming its image (ids[i], else #i), that it has no `what`, and `fix`."""
  for i, mask in enumerate(np.asarray(masks, bool)):
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
      name = repr(ids[i]) if ids is not None else f"#{i}"
      raise ValueError(f"the target mask of image {name} is empty, so it has no {what}; {fix}")
    yield i, xs, ys


def bounding_boxes(masks: np.ndarray, ids=None) -> np.ndarray:
  """(N, H, W) bool -> (N, 4) float32 tight boxes (x0, y0, x1, y1): first and last pixel."""
  masks = np.asarray(masks, bool)
  if masks.ndim == 2:
    return bounding_boxes(masks[None], ids)[0]
  boxes = np.zeros((masks.shape[0], 4), np.float32)
  for i, xs, ys in mask_pixels(masks, ids, "bounding box", "drop the image or give its box in "
                               "a prompts file (id,x0,y0,x1,y1)."):
    boxes[i] = xs.min(), ys.min(), xs.max(), ys.max()
  return boxes


def rough_boxes(boxes: np.ndarray, jitter, rng: np.random.Generator,
                image_size: tuple[int, int] | None = None, min_size: float = 2.0) -> np.ndarray:
  """Each coordinate of each (N, 4) box moved by U(-jitter, jitter) x the box's width/height.

  `jitter` is one number or one per box. One draw of 4 per box, in order, so a seeded
  generator gives every image the same box whatever else is drawn after it. With
  `image_size` (H, W) the boxes are clipped inside the image; corners that cross are
  re-centred to a box `min_size` pixels wide. Returns (N, 4) float32.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  jitter = np.broadcast_to(np.asarray(jitter, np.float64), (len(boxes),))
  size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
  moved = boxes + rng.uniform(-1.0, 1.0, boxes.shape) * jitter[:, None] * size
  upper = None
  if image_size is not None:
    h, w = image_size
    upper = np.array([w - 1, h - 1], np.float64)
    moved = np.clip(moved, 0.0, np.concatenate([upper, upper]))
  lo, hi = moved[:, :2], moved[:, 2:]
  mid, half = 0.5 * (lo + hi), 0.5 * np.maximum(hi - lo, min_size)
  if upper is not None:  # a re-centred box near an edge stays inside
    mid = np.clip(mid, half, upper - half)
  return np.concatenate([mid - half, mid + half], axis=1).astype(np.float32)


def centroid_clicks(targets: np.ndarray, ids=None) -> np.ndarray:
  """(N, H, W) bool target masks -> (N, 2) float32 (x, y) centroids, original pixels."""
  targets = np.asarray(targets, bool)
  if targets.ndim != 3:
    raise ValueError(f"targets has shape {targets.shape}; expected (N, H, W) masks.")
  clicks = np.zeros((targets.shape[0], 2), np.float32)
  for i, xs, ys in mask_pixels(targets, ids, "centroid", "drop the image or give "
                                           "its click in a clicks file (id,x,y)."):
    clicks[i] = xs.mean(), ys.mean()
  return clicks
