"""The functional SAM API: encode a batch of images once, decode any number of prompts.

    emb, frame = encode_images(params, images, config)       # (B,H,W[,3]) -> (B,64,64,256)
    masks, iou, low_res = predict(params, emb, frame, config, points=xy, labels=lab)

Clicks and boxes are in original-image pixels, (x, y); `frame` remembers the sizes needed to map
them into the model's frame (1024 for SAM, 256 for LiteMedSAM) and masks back; the pre- and
post-processing are the variant's own (`processing.processing_for(config)`). `decode_clicks` is
the pure, jit/vmap/grad-able core that SAMPOT differentiates with respect to the click coordinates.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sampot_jax.sam import model as sam_model
from sampot_jax.sam import processing

MASK_THRESHOLD = 0.0


@dataclasses.dataclass(frozen=True)
class ImageFrame:
  """Sizes shared by a batch: `input_size` (h, w) after resizing, `original_size` (H, W)."""
  input_size: tuple[int, int]
  original_size: tuple[int, int]


def encode_images(params, images, config, batch_size: int | None = None):
  """(B, H, W[, 3]) uint8/uint16 images of one size -> ((B, g, g, 256) float32, ImageFrame).

  `batch_size` splits the encoder calls (memory); the result is the same.
  """
  proc = processing.processing_for(config)
  pixels, input_size, original_size = proc.prepare_images(images, config.img_size)
  step = batch_size or len(pixels)
  chunks = [sam_model.encode_jit(params, jnp.asarray(pixels[i:i + step]), config)
            for i in range(0, len(pixels), step)]
  return jnp.concatenate(chunks), ImageFrame(tuple(input_size), tuple(original_size))


def decode_clicks(params, embeddings, points, labels, frame: ImageFrame, config,
                  multimask_output: bool = False):
  """Points (B, N, 2) (x, y) in original pixels, labels (B, N) -> low-res logits (B, M, 256, 256),
  IoU predictions (B, M). Pure and differentiable with respect to `points`."""
  points = jnp.asarray(points)
  points = points.astype(jnp.promote_types(points.dtype, jnp.float32))
  points = processing.processing_for(config).apply_coords(points, frame.original_size,
                                                          config.img_size)
  return sam_model.decode(params, embeddings, config, points=points, labels=jnp.asarray(labels),
                          multimask_output=multimask_output)


def _check_prompts(points, labels, boxes, frame: ImageFrame):
  h, w = frame.original_size
  if points is not None:
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[-1] != 2:
      raise ValueError(f"points has shape {points.shape}; expected (B, N, 2) (x, y) pixels.")
    if labels is None or np.shape(labels) != points.shape[:2]:
      raise ValueError(f"labels must have shape {points.shape[:2]} to match points; got "
                       f"{None if labels is None else np.shape(labels)}. Use 1 foreground, 0 background.")
    if not np.isfinite(points).all():
      raise ValueError("points contains NaN or inf; pass finite pixel coordinates.")
    outside = (points[..., 0] < 0) | (points[..., 0] > w) | (points[..., 1] < 0) | (points[..., 1] > h)
    if outside.any():
      first = tuple(points[np.argwhere(outside)[0][0], np.argwhere(outside)[0][1]])
      raise ValueError(f"{int(outside.sum())} point(s) lie outside the {w}x{h} (W x H) image, e.g. "
                       f"(x, y) = {first}; clicks are (x, y) in original-image pixels.")
    if not np.isin(np.asarray(labels), (-1, 0, 1)).all():
      raise ValueError("labels must be 1 (foreground), 0 (background) or -1 (ignored).")
  if boxes is not None:
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
      raise ValueError(f"boxes has shape {boxes.shape}; expected (B, 4) as (x0, y0, x1, y1).")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
      raise ValueError(f"box {boxes[np.argmax(bad)].tolist()} has x1 < x0 or y1 < y0; boxes are "
                       "(x0, y0, x1, y1) with the top-left corner first.")


def predict(params, embeddings, frame: ImageFrame, config, points=None, labels=None, boxes=None,
            mask_input=None, multimask_output: bool = True, return_logits: bool = False):
  """The batched counterpart of the official `SamPredictor.predict`.

  points (B, N, 2) and boxes (B, 4) in original pixels; labels (B, N); mask_input (B, 256, 256)
  logits from a previous call. Returns masks (B, M, H, W) (bool, or float32 logits with
  return_logits), IoU predictions (B, M), low-res logits (B, M, 256, 256).
  """
  if points is None and boxes is None and mask_input is None:
    raise ValueError("predict needs at least one prompt: points, boxes or mask_input.")
  _check_prompts(points, labels, boxes, frame)
  proc = processing.processing_for(config)
  model_points = None if points is None else proc.apply_coords(
      np.asarray(points), frame.original_size, config.img_size)
  model_boxes = None if boxes is None else proc.apply_boxes(
      np.asarray(boxes), frame.original_size, config.img_size)
  low_res, iou = sam_model.decode(
      params, embeddings, config, points=model_points,
      labels=None if labels is None else jnp.asarray(labels, jnp.int32), boxes=model_boxes,
      mask_input=None if mask_input is None else jnp.asarray(mask_input, jnp.float32),
      multimask_output=multimask_output)
  masks = proc.postprocess_masks(low_res, frame.input_size, frame.original_size, config.img_size)
  if not return_logits:
    masks = masks > MASK_THRESHOLD
  return masks, iou, low_res
