"""The functional SAM API: encode a batch of images once, decode any number of prompts.

    emb, frame = encode_images(params, images, config)       # (B,H,W[,3]) -> (B,64,64,256)
    masks, iou, low_res = predict(params, emb, frame, config, points=xy, labels=lab)

Clicks and boxes are in original-image pixels, (x, y); `frame` remembers the sizes needed to map
them into the model's frame (1024 for SAM, 256 for LiteMedSAM) and masks back; the pre- and
post-processing are the variant's own (`processing.processing_for(config)`). `decode_clicks` is
the pure, jit/vmap/grad-able core that SAMPOT differentiates with respect to the click coordinates.
"""
import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sampot_jax.sam import model as sam_model
from sampot_jax.sam import processing
from sampot_jax.sam import transforms

MASK_THRESHOLD = 0.0


@dataclasses.dataclass(frozen=True)
class ImageFrame:
  """Sizes shared by a batch: `input_size` (h, w) after resizing, `original_size` (H, W)."""
  input_size: tuple[int, int]
  original_size: tuple[int, int]


def frame_for(original_size: tuple[int, int], img_size: int) -> ImageFrame:
  """The ImageFrame SAM uses for images of `original_size` (H, W)."""
  h, w = (int(s) for s in original_size)
  return ImageFrame(transforms.preprocess_shape(h, w, img_size), (h, w))


def click_upper(original_size: tuple[int, int]) -> tuple[float, float]:
  """The largest (x, y) of a click on an (H, W) image: the last pixel's index.

  Clicks are pixel positions, so 0 <= x <= W - 1 and 0 <= y <= H - 1 everywhere
  (validation, clipping during evolution, pixel lookup).
  """
  h, w = original_size
  return float(w - 1), float(h - 1)


def outside_image(points, original_size: tuple[int, int]) -> np.ndarray:
  """(..., 2) (x, y) points -> (...) bool, True where a point lies outside `click_upper`."""
  points = np.asarray(points, np.float64)
  x_max, y_max = click_upper(original_size)
  return ((points[..., 0] < 0) | (points[..., 0] > x_max) | (points[..., 1] < 0)
          | (points[..., 1] > y_max))


def click_pixels(clicks, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(..., 2) (x, y) clicks -> the nearest pixel's (column, row) int indices inside `shape`."""
  clicks = np.asarray(clicks, np.float64)
  h, w = shape
  x = np.clip(np.rint(clicks[..., 0]), 0, w - 1).astype(int)
  y = np.clip(np.rint(clicks[..., 1]), 0, h - 1).astype(int)
  return x, y


def check_clicks(clicks, original_size: tuple[int, int], ids=None) -> np.ndarray:
  """Validates (B, 2) (x, y) clicks (see check_prompts); returns them as float32."""
  if np.ndim(clicks) != 2 or np.shape(clicks)[1] != 2:
    raise ValueError(f"clicks has shape {np.shape(clicks)}; expected (B, 2) as (x, y) pixels.")
  return check_prompts(clicks, original_size, ids)


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


# A prompt as one vector of original-image pixels, the variable SAMPOT moves: its length says
# what it is. A box and a click together are the box's corners then the click.
PROMPT_KINDS = {2: "click", 4: "box", 6: "box+click"}
PROMPT_FIELDS = {2: ("x", "y"), 4: ("x0", "y0", "x1", "y1"), 6: ("x0", "y0", "x1", "y1", "x", "y")}


def prompt_anchor(prompts):
  """(..., D) prompts -> (..., 2): the click where there is one, else the box's centre."""
  prompts = np.asarray(prompts)
  if prompts.shape[-1] == 4:
    return 0.5 * (prompts[..., 0:2] + prompts[..., 2:4])
  return prompts[..., -2:]


# Variants trained on one kind of prompt only: other prompts work but give poor masks.
TRAINED_PROMPTS = {"lite_medsam": "box"}


def warn_if_untrained(config, kind: str) -> None:
  """A logged warning when `kind` prompts go to a variant trained without them."""
  trained = TRAINED_PROMPTS.get(config.get("variant"))
  if trained and trained not in kind:
    logging.warning("%s was trained on %s prompts only; %s prompts give it poor masks (LiteMedSAM: "
                    "Dice about 0.01 from a lung click). Prompt it with boxes.",
                    config.variant, trained, kind)


def prompt_kind(dim: int) -> str:
  if dim not in PROMPT_KINDS:
    raise ValueError(f"a prompt vector has {dim} values; expected 2 (x, y), 4 (x0, y0, x1, y1) "
                     "or 6 (a box then a click).")
  return PROMPT_KINDS[dim]


def decode_prompts(params, embeddings, prompts, frame: ImageFrame, config,
                   multimask_output: bool = False, image_side=None):
  """Prompt vectors (B, D) in original pixels (see PROMPT_KINDS) -> low-res logits (B, M, L, L),
  IoU predictions (B, M). Pure and differentiable with respect to `prompts` (click and box
  corners alike): SAMPOT's decoder. image_side: `image_side(params, embeddings, config)`, to
  skip the decoder's prompt-independent work when one image is decoded many times."""
  prompts = jnp.asarray(prompts)
  prompts = prompts.astype(jnp.promote_types(prompts.dtype, jnp.float32))
  kind = prompt_kind(prompts.shape[-1])
  proc = processing.processing_for(config)
  points = labels = boxes = None
  if kind in ("box", "box+click"):
    boxes = proc.apply_boxes(prompts[:, :4], frame.original_size, config.img_size)
  if kind in ("click", "box+click"):
    points = proc.apply_coords(prompts[:, None, -2:], frame.original_size, config.img_size)
    labels = jnp.ones(points.shape[:2], jnp.int32)
  return sam_model.decode(params, embeddings, config, points=points, labels=labels, boxes=boxes,
                          multimask_output=multimask_output, image_side=image_side)


def image_side(params, embeddings, config) -> dict:
  """(B, g, g, C) embeddings -> the mask decoder's prompt-independent projections of them, for
  `decode_prompts(..., image_side=...)` (sam.model.image_side)."""
  return sam_model.image_side(params, embeddings, config)


def check_prompts(prompts, original_size: tuple[int, int], ids=None,
                  uppers=None) -> np.ndarray:
  """Validates (B, D) prompt vectors against an (H, W) image; returns them as float32.

  Clicks and box corners must be finite and inside the image (`click_upper`); boxes must have
  x0 < x1 and y0 < y1. `ids` name the images in errors (else the row number). `uppers`
  (B, 2): each row's own largest (x, y) instead, when images of several sizes share one frame
  (evolve.Batch.uppers).
  """
  prompts = np.asarray(prompts, np.float64)
  if prompts.ndim != 2:
    raise ValueError(f"prompts have shape {prompts.shape}; expected (B, D), one row per image.")
  kind = prompt_kind(prompts.shape[1])
  name = lambda i: repr(ids[i]) if ids is not None else f"#{i}"
  what = {"click": "click", "box": "box", "box+click": "prompt"}[kind]
  fields = "(" + ", ".join(PROMPT_FIELDS[prompts.shape[1]]) + ")"
  bad = ~np.isfinite(prompts).all(axis=1)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"the {what} {fields} of image {name(i)} is {prompts[i].tolist()}; it must "
                     "be finite pixel coordinates.")
  h, w = original_size
  upper = np.broadcast_to(np.asarray(click_upper(original_size) if uppers is None else uppers,
                                     np.float64), (len(prompts), 2))
  points = prompts.reshape(len(prompts), -1, 2)
  outside = ((points < 0) | (points > upper[:, None])).any(axis=(1, 2))
  if outside.any():
    i = int(np.argmax(outside))
    extent = f"the {w}x{h} (W x H) image" if uppers is None else "its image's extent"
    raise ValueError(
        f"{int(outside.sum())} {what}(s) lie outside {extent}, e.g. image "
        f"{name(i)} at {fields} = {prompts[i].tolist()}; coordinates are pixels with "
        f"0 <= x <= {upper[i, 0]:g}, 0 <= y <= {upper[i, 1]:g}.")
  if kind != "click":
    unordered = (prompts[:, 2] <= prompts[:, 0]) | (prompts[:, 3] <= prompts[:, 1])
    if unordered.any():
      i = int(np.argmax(unordered))
      raise ValueError(f"the box of image {name(i)} is {prompts[i, :4].tolist()}: it needs "
                       "x0 < x1 and y0 < y1 (top-left corner first).")
  return prompts.astype(np.float32)


def constrain_prompts(prompts: jax.Array, original_size: tuple[int, int] | None,
                      min_box_size=1.0, upper: jax.Array | None = None) -> jax.Array:
  """(..., D) prompts moved to the nearest valid ones: inside the image, boxes ordered with
  sides >= min_box_size (a side that shrank below it is re-centred at that size). jit-able.

  `upper`: the largest (x, y), (..., 2) broadcastable to the prompts' batch axes (e.g. each
  image's own, traced); None: click_upper(original_size). min_box_size may be traced too."""
  kind = prompt_kind(prompts.shape[-1])
  upper = (jnp.array(click_upper(original_size), prompts.dtype) if upper is None
           else jnp.asarray(upper, prompts.dtype))
  out = jnp.clip(prompts, 0.0, jnp.tile(upper, prompts.shape[-1] // 2))
  if kind == "click":
    return out
  lo, hi = out[..., 0:2], out[..., 2:4]
  mid = 0.5 * (lo + hi)
  half = 0.5 * jnp.maximum(hi - lo, min_box_size)
  mid = jnp.clip(mid, half, upper - half)  # a minimal box near an edge stays inside
  box = jnp.concatenate([mid - half, mid + half], axis=-1)
  return jnp.concatenate([box, out[..., 4:]], axis=-1)


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
    outside = outside_image(points, frame.original_size)
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
    for row, box in enumerate(boxes):
      if not np.isfinite(box).all():
        raise ValueError(f"box of row {row} is {box.tolist()}; corners must be finite pixels.")
      if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"box of row {row} is {box.tolist()}: it has x1 < x0 or y1 < y0; boxes "
                         "are (x0, y0, x1, y1) with the top-left corner first.")
      if outside_image(box.reshape(2, 2), frame.original_size).any():
        raise ValueError(f"box of row {row} is {box.tolist()}: it reaches outside the {w}x{h} "
                         "(W x H) image; corners are pixels inside it.")


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
  if boxes is None and points is not None:
    warn_if_untrained(config, "click")
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


@functools.partial(jax.jit, static_argnames=("sam_config", "frame", "multimask_output",
                                             "decode_fn"))
def prompt_masks_jit(sam_params, embeddings, prompts, *, sam_config, frame, multimask_output,
                     decode_fn=decode_prompts):
  """`prompt_masks`' compiled core (sam_config frozen)."""
  b, k, d = prompts.shape
  low_res, iou = decode_fn(sam_params, jnp.repeat(embeddings, k, axis=0),
                           prompts.reshape(b * k, d), frame, sam_config,
                           multimask_output=multimask_output)
  logits = processing.processing_for(sam_config).postprocess_masks(
      low_res, frame.input_size, frame.original_size, sam_config.img_size)
  masks = (logits > MASK_THRESHOLD).reshape((b, k) + logits.shape[1:])
  iou = iou.reshape((b, k) + iou.shape[1:])
  return (masks, iou) if multimask_output else (masks[:, :, 0], iou[:, :, 0])


def prompt_masks(sam_params, sam_config, embeddings: jax.Array, frame: ImageFrame,
                 prompts: jax.Array, multimask_output: bool = False,
                 decode_fn=decode_prompts):
  """Hard masks at the original size for K prompt vectors per image (jitted): several clicks,
  or several boxes, per image.

  Args:
    embeddings: (B, g, g, C); prompts: (B, K, D) original pixels (see PROMPT_KINDS).

  Returns:
    masks (B, K, H, W) bool and IoU predictions (B, K); with multimask_output
    (B, K, M, H, W) and (B, K, M).
  """
  return prompt_masks_jit(sam_params, embeddings, jnp.asarray(prompts, jnp.float32),
                          sam_config=ml_collections.FrozenConfigDict(sam_config), frame=frame,
                          multimask_output=multimask_output, decode_fn=decode_fn)
