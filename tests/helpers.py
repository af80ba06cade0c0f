"""Helpers shared by test modules (test modules never import each other).

An analytic segmenter (`disk_decoder`): logits = RADIUS - distance to the click, so
  SAMPOT's loop can be checked where the best click is known, without SAM.
"""
import jax.numpy as jnp

from sampot_jax import evolve
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor
from sampot_jax.sam import transforms


# ---------------------------------------------------------------------------
# An analytic segmenter: logits = RADIUS - distance to the click (model frame).

DISK_CONFIG = sam_model.sam_config("vit_b", img_size=64)
DISK_FRAME = predictor.frame_for((48, 48), 64)
RADIUS = 12.0
TARGET = (30.0, 20.0)


def disk_decoder(params, embeddings, prompts, frame, config, multimask_output=False):
  """predictor.decode_prompts' signature; (B, 2) click prompts -> disk logits (B, M, 64, 64)."""
  del params, embeddings
  side = config.img_size  # low-res frame = model frame here
  p = transforms.apply_coords(prompts, frame.original_size, config.img_size)
  c = jnp.arange(side) + 0.5
  d2 = (c[None, None, :] - p[:, 0, None, None]) ** 2 + (c[None, :, None] - p[:, 1, None, None]) ** 2
  logits = (RADIUS - jnp.sqrt(d2 + 1e-6))[:, None]
  m = 3 if multimask_output else 1
  return jnp.repeat(logits, m, 1), jnp.ones((prompts.shape[0], m))


def soft_dice(target, image, mask):
  del image
  return 2 * (mask * target).sum((1, 2)) / (mask.sum((1, 2)) + target.sum((1, 2)))


def disk_mask(click, slope=5.0):
  low, _ = disk_decoder(None, None, jnp.asarray([click]), DISK_FRAME, DISK_CONFIG)
  return evolve.soft_mask(low[:, 0], DISK_FRAME, 64, (48, 48), slope)


def dice_with_image(variables, image, mask):
  """Soft Dice of the mask with the image (variables are shared by the batch: unused)."""
  del variables
  return 2 * (mask * image).sum((1, 2)) / (mask.sum((1, 2)) + image.sum((1, 2)))


def box_decoder(params, embeddings, prompts, frame, config, multimask_output=False):
  """predictor.decode_prompts' signature; (B, 4) box prompts -> logits of the box itself
  (positive inside, 1 per pixel of distance to the nearest side), (B, M, 64, 64)."""
  del params, embeddings
  box = transforms.apply_boxes(prompts, frame.original_size, config.img_size)
  c = jnp.arange(config.img_size) + 0.5
  inside_x = jnp.minimum(c[None, None, :] - box[:, 0, None, None], box[:, 2, None, None] - c[None, None, :])
  inside_y = jnp.minimum(c[None, :, None] - box[:, 1, None, None], box[:, 3, None, None] - c[None, :, None])
  logits = jnp.minimum(inside_x, inside_y)[:, None]
  m = 3 if multimask_output else 1
  return jnp.repeat(logits, m, 1), jnp.ones((prompts.shape[0], m))
