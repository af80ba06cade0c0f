"""What SAMPOT is compared with, in the same run.

- the initial click: the ground-truth centroid (the paper's stand-in for a user,
  prompts.centroid_clicks), or the user's clicks from a CSV file (data.prompt_csv);
- SAM's multimask output at the initial click, picked by SAM's own IoU;
- a gradient-free search: a grid of clicks inside the initial mask, scored by
  the regressor, best score kept;
- the true-Dice grid: the same grid of clicks anywhere in the image ranked by the true Dice,
  the best a single click can do (the paper's Fig. 1 heat map).

`grid_maps` computes the last two in one jitted call: for every image and grid
click, the regressor's score of SAM's soft mask, SAM's IoU and the true Dice.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sampot_jax.runtime import sharding
from sampot_jax.sam import frozen
from sampot_jax.sam import predictor
from sampot_jax.sam import processing
from sampot_jax.sampot import evolve
from sampot_jax.sampot import metrics
from sampot_jax.sampot import prompts as prompts_lib
from sampot_jax.sampot import scorer as scorer_lib
from sampot_jax.sampot.scorer import Scorer


def grid_clicks(original_size: tuple[int, int], n: int) -> np.ndarray:
  """(n*n, 2) float32 (x, y): the centres of an n x n grid of cells, row by row."""
  h, w = original_size
  xs = (np.arange(n) + 0.5) * w / n - 0.5
  ys = (np.arange(n) + 0.5) * h / n - 0.5
  yy, xx = np.meshgrid(ys, xs, indexing="ij")
  return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("sam_config", "frame", "score_fn", "slope",
                                             "chunk"))
def _grid_maps(sam_params, score_variables, embeddings, images_small, targets, prompts, *,
               sam_config, frame, score_fn, slope, chunk):
  def one_image(embedding, image_small, target, image_prompts):
    def one_prompt(prompt):
      low_res, iou = predictor.decode_prompts(sam_params, embedding[None], prompt[None], frame,
                                              sam_config)
      soft = evolve.soft_mask(low_res[0, 0], frame, sam_config.img_size, image_small.shape,
                              slope)
      score = score_fn(score_variables, image_small[None], soft[None])[0]
      mask = processing.processing_for(sam_config).postprocess_masks(
          low_res[0, 0], frame.input_size, frame.original_size,
          sam_config.img_size) > predictor.MASK_THRESHOLD
      return score, iou[0, 0], metrics.mask_dice(mask, target)
    # Chunks of prompts at a time bound the memory of the full-size masks.
    return jax.lax.map(one_prompt, image_prompts, batch_size=chunk)
  return jax.vmap(one_image)(embeddings, images_small, targets, prompts)


def grid_maps(sam: frozen.Sam, scorer: Scorer, embeddings, frame, images_small, targets,
              prompts, slope: float, chunk: int = 16):
  """Score, SAM IoU and true Dice of K prompts on every image, one compiled call.

  Args:
    sam, scorer: the frozen models (SAM's own decoder is used).
    embeddings: (B, g, g, C); images_small: (B, S, S) float in [0, 1]; targets:
      (B, H, W) bool ground truth at the original size; prompts: (K, D), the same
      for every image (e.g. grid_clicks), or (B, K, D), each image's own (e.g.
      random_boxes).
    slope: the soft mask's sigmoid slope (as in evolve).
    chunk: prompts decoded together per image.

  Returns:
    scores, ious, dice: (B, K) float32 each.
  """
  prompts = np.asarray(prompts, np.float32)
  b = np.shape(embeddings)[0]
  if prompts.ndim == 2:
    prompts = np.broadcast_to(prompts, (b,) + prompts.shape)
  k = prompts.shape[1]
  chunk = max(1, min(int(chunk), k))
  # Whole chunks only: a remainder would be a second copy of SAM in the program.
  padded, _ = sharding.pad_batch(np.swapaxes(prompts, 0, 1), chunk)
  padded = np.swapaxes(padded, 0, 1)
  maps = _grid_maps(sam.params, scorer.variables, embeddings, jnp.asarray(images_small),
                    jnp.asarray(targets, bool), sharding.like(padded, embeddings),
                    sam_config=ml_collections.FrozenConfigDict(sam.config), frame=frame,
                    score_fn=scorer.fn, slope=float(slope), chunk=chunk)
  return tuple(m[:, :k] for m in maps)


def inside(masks: np.ndarray, clicks: np.ndarray) -> np.ndarray:
  """(N, H, W) bool masks, (K, 2) clicks -> (N, K) bool: click on a mask pixel (nearest)."""
  x, y = predictor.click_pixels(clicks, masks.shape[1:])
  return np.asarray(masks)[:, y, x]


def grid_search(scores: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Best-scoring allowed grid click per image.

  Args:
    scores: (N, K) regressor scores; allowed: (N, K) bool (inside the initial mask).

  Returns:
    (index (N,) int, or -1 where no finite allowed score exists; found (N,) bool).
  """
  ranked = np.where(allowed & np.isfinite(scores), scores, -np.inf)
  found = np.isfinite(ranked).any(axis=1)
  return np.where(found, ranked.argmax(axis=1), -1), found


def multimask_choice(sam: frozen.Sam, embeddings, frame, prompts):
  """SAM's 3 masks for each prompt, the one SAM rates highest.

  prompts (B, D) -> (mask (B, H, W) bool, iou (B,), which (B,) int) as jax arrays.
  """
  masks, ious = predictor.prompt_masks(sam.params, sam.config, embeddings, frame,
                                       jnp.asarray(prompts)[:, None], multimask_output=True,
                                       decode_fn=sam.decode)
  return _pick(masks[:, 0], ious[:, 0])


@jax.jit
def _pick(masks, ious):
  which = jnp.argmax(ious, axis=1)
  rows = jnp.arange(masks.shape[0])
  return masks[rows, which], ious[rows, which], which


# ----------------------------------------------------------------------------
# Box prompts (LiteMedSAM): what SAMPOT's box evolution is compared with.

BOX_METHODS = ("iou_ascent", "true_dice_ascent", "gt_box")


def soft_dice_with_target(variables, target_small, soft_mask):
  """A perfect regressor: soft Dice of the mask with the (resized) ground truth. (B,)."""
  del variables
  inter = (soft_mask * target_small).sum((1, 2))
  return 2 * inter / (soft_mask.sum((1, 2)) + target_small.sum((1, 2)) + 1e-6)


# The bound's scorer: the images it is given are the targets themselves.
TRUE_DICE = Scorer(fn=soft_dice_with_target, variables=None, resolution=0)


def random_boxes(boxes, k: int, jitter: float, rng: np.random.Generator,
                 original_size: tuple[int, int]) -> np.ndarray:
  """(B, 4) boxes -> (B, k, 4): each box, then k - 1 rough boxes around it (prompts.rough_boxes
  of the box, each coordinate moved by up to jitter x its width/height, inside the image)."""
  candidates = np.asarray(boxes, np.float64)[:, None].repeat(k, axis=1)
  moved = prompts_lib.rough_boxes(candidates.reshape(-1, 4), jitter, rng, original_size)
  return np.concatenate([np.asarray(boxes)[:, None],
                         moved.reshape(len(candidates), k, 4)[:, 1:]], axis=1)


def box_methods(sam: frozen.Sam, scorer: Scorer, batch: evolve.Batch, targets, settings,
                config, rng) -> dict:
  """Every box baseline for a batch, as masks (B, H, W) or Dice (B,):

  - iou_ascent: the same ascent with SAM's own IoU prediction as the objective;
  - true_dice_ascent: the same ascent on the true soft Dice (a perfect regressor: the bound);
  - random_search: the gradient-free search, num_steps + 1 boxes around the initial one
    (the same number of decoder calls as SAMPOT, its population included), best by SAMPOT's
    score (evolve.blend);
  - gt_box: the ground-truth bounding box.

  batch.prompts are the boxes; targets (B, H, W) bool; config: config.baselines.
  """
  embeddings, frame, images_small, boxes = (batch.embeddings, batch.frame, batch.images_small,
                                            batch.prompts)
  out = {}
  iou = evolve.evolve_prompts(sam, scorer, batch, dataclasses.replace(settings, objective="iou"),
                              rng=rng)
  out["iou_ascent_mask"], out["iou_ascent_prompt"] = iou.best_mask, iou.best_prompt
  size = images_small.shape[1:]
  targets_small = jax.image.resize(jnp.asarray(targets, jnp.float32),
                                   (targets.shape[0],) + tuple(size), "linear")
  bound = evolve.evolve_prompts(
      sam, TRUE_DICE, dataclasses.replace(batch, images_small=targets_small),
      dataclasses.replace(settings, iou_weight=0.0), rng=rng)
  out["true_dice_ascent_mask"] = bound.best_mask
  out["true_dice_ascent_prompt"] = bound.best_prompt
  # Host copies (every process gets the whole batch: sharding.gather) for the numpy work.
  host_targets, host_boxes = sharding.gather((targets, boxes))
  gt = prompts_lib.bounding_boxes(np.asarray(host_targets))
  masks, _ = predictor.prompt_masks(sam.params, sam.config, embeddings, frame,
                                    sharding.like(gt[:, None], embeddings))
  out["gt_box_mask"], out["gt_box_prompt"] = masks[:, 0], gt
  k = settings.num_steps + 1 + (settings.population if settings.population > 1 else 0)
  seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
  candidates = random_boxes(host_boxes, k, config.search_jitter, np.random.default_rng(seed),
                            frame.original_size)
  scores, ious, dice = grid_maps(sam, scorer, embeddings, frame, images_small, targets,
                                 candidates, settings.slope, config.grid_chunk)
  scores, ious, dice = sharding.gather((scores, ious, dice))
  scores = scorer_lib.blend(np.asarray(scores), np.asarray(ious), settings.iou_weight)
  best = np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf), axis=1)
  rows = np.arange(len(best))
  out["random_search_dice"] = np.asarray(dice)[rows, best]
  out["random_search_prompt"] = candidates[rows, best].astype(np.float32)
  return out
