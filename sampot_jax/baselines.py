"""What SAMPOT is compared with, in the same run.

- the initial click: the ground-truth centroid (the paper's stand-in for a user),
  or the user's clicks from a CSV file (`read_clicks`);
- SAM's multimask output at the initial click, picked by SAM's own IoU;
- a gradient-free search: a grid of clicks inside the initial mask, scored by
  the regressor, best score kept;
- the oracle: true Dice over the same grid of clicks anywhere in the image, the
  best a single click can do (the paper's Fig. 1 heat map).

`grid_maps` computes the last two in one jitted call: for every image and grid
click, the regressor's score of SAM's soft mask, SAM's IoU and the true Dice.
"""
import csv
import functools
import io
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sampot_jax import evolve
from sampot_jax import metrics
from sampot_jax import prompts as prompts_lib
from sampot_jax import sharding
from sampot_jax.sam import predictor
from sampot_jax.sam import processing


def centroid_clicks(targets: np.ndarray, ids=None) -> np.ndarray:
  """(N, H, W) bool target masks -> (N, 2) float32 (x, y) centroids, original pixels."""
  targets = np.asarray(targets, bool)
  if targets.ndim != 3:
    raise ValueError(f"targets has shape {targets.shape}; expected (N, H, W) masks.")
  clicks = np.zeros((targets.shape[0], 2), np.float32)
  for i, xs, ys in prompts_lib.mask_pixels(targets, ids, "centroid", "drop the image or give "
                                           "its click in a clicks file (id,x,y)."):
    clicks[i] = xs.mean(), ys.mean()
  return clicks


def _clicks_text(path: Path) -> str:
  """The file decoded as UTF-8 (an Excel BOM dropped), or a ValueError saying where it is not."""
  data = path.read_bytes()
  if data.startswith((b"\xff\xfe", b"\xfe\xff")):
    raise ValueError(f"{path} is UTF-16 (Excel's 'Unicode Text'); save it as UTF-8 "
                     "(Excel: 'CSV UTF-8'), header id,x,y.")
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise ValueError(f"{path}, line {line}, byte {column} (byte {e.start} of the file): "
                     f"{data[e.start:e.end]!r} is not UTF-8; save the file as UTF-8 "
                     "(Excel: 'CSV UTF-8'), header id,x,y.") from None


def read_clicks(path, ids, image_shape: tuple[int, int], split_ids=None) -> np.ndarray:
  """Prompts from a CSV file -> (N, D) float32 in the order of `ids`.

  The header says which prompt: id,x,y (clicks, D = 2) or id,x0,y0,x1,y1 (boxes, D = 4).
  Coordinates are pixels of the images as evaluated (config.data.image_size), x to the
  right, y down. Every id needs exactly one row; unknown ids, duplicates, missing
  ids, non-numbers and clicks outside the image are errors that name the row
  (line numbers as in an editor). UTF-8, with or without a BOM.

  Args:
    ids: the images evaluated (with config.max_images, the first ones of the split).
    split_ids: every id of the split, if known: rows for those not evaluated
      (beyond max_images) are then skipped instead of refused.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"clicks file {path} does not exist; give a CSV with header "
                            "id,x,y (or leave config.prompts_file empty for the ground-truth stand-ins).")
  ids = list(ids)
  wanted = {sid: i for i, sid in enumerate(ids)}
  in_split = set(ids if split_ids is None else split_ids)
  seen = {}
  reader = csv.DictReader(io.StringIO(_clicks_text(path), newline=""))
  header = set(reader.fieldnames or ())
  fields = ("x0", "y0", "x1", "y1") if {"x0", "y0", "x1", "y1"} <= header else ("x", "y")
  if "id" not in header or not set(fields) <= header:
    raise ValueError(f"{path}: the header is {reader.fieldnames}; expected columns id,x,y "
                     "(clicks) or id,x0,y0,x1,y1 (boxes).")
  clicks = np.full((len(ids), len(fields)), np.nan, np.float32)
  for row in reader:
    line = reader.line_num  # The row's last physical line: blank lines counted.
    sid = (row["id"] or "").strip()
    if sid not in wanted:
      if sid in in_split:
        continue  # In the split, not among the images evaluated.
      if split_ids is None:
        raise ValueError(
            f"{path}, line {line}: image id {sid!r} is not in the evaluated set of "
            f"{len(ids)} images (e.g. {ids[:3]}). If the run evaluates only the first "
            "config.max_images images of the split, remove the other rows or set "
            "config.max_images=0; otherwise fix the id or the split (config.split).")
      raise ValueError(f"{path}, line {line}: image id {sid!r} is not in the split "
                       f"({len(in_split)} images, e.g. {ids[:3]}); fix the id or the split "
                       "(config.split).")
    if sid in seen:
      raise ValueError(f"{path}, line {line}: image id {sid!r} already has a click on line "
                       f"{seen[sid]}; give one click per image.")
    try:
      xy = tuple(float(row[f]) for f in fields)
    except (TypeError, ValueError):
      given = ", ".join(f"{f}={row[f]!r}" for f in fields)
      raise ValueError(f"{path}, line {line}: {given} are not numbers.") from None
    seen[sid] = line
    clicks[wanted[sid]] = xy
  missing = [sid for sid in ids if sid not in seen]
  if missing:
    raise ValueError(f"{path} has no click for {len(missing)} image(s), e.g. {missing[:3]}; "
                     f"give one row per evaluated image ({len(ids)} images).")
  try:
    return predictor.check_prompts(clicks, image_shape, ids=list(ids))
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


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


def grid_maps(sam_params, sam_config, score_fn, score_variables, embeddings, frame,
              images_small, targets, prompts, slope: float, chunk: int = 16):
  """Score, SAM IoU and true Dice of K prompts on every image, one compiled call.

  Args:
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
  maps = _grid_maps(sam_params, score_variables, embeddings, jnp.asarray(images_small),
                    jnp.asarray(targets, bool), jnp.asarray(padded),
                    sam_config=ml_collections.FrozenConfigDict(sam_config), frame=frame,
                    score_fn=score_fn, slope=float(slope), chunk=chunk)
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


def multimask_choice(sam_params, sam_config, embeddings, frame, prompts, decode_fn=None):
  """SAM's 3 masks for each prompt, the one SAM rates highest.

  prompts (B, D) -> (mask (B, H, W) bool, iou (B,), which (B,) int) as jax arrays.
  """
  kwargs = {} if decode_fn is None else {"decode_fn": decode_fn}
  masks, ious = predictor.prompt_masks(sam_params, sam_config, embeddings, frame,
                                       jnp.asarray(prompts)[:, None], multimask_output=True,
                                       **kwargs)
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


def box_methods(sam_params, sam_config, scorer, variables, embeddings, frame, images_small,
                targets, boxes, settings, config, rng) -> dict:
  """Every box baseline for a batch, as masks (B, H, W) or Dice (B,):

  - iou_ascent: the same ascent with SAM's own IoU prediction as the objective;
  - true_dice_ascent: the same ascent on the true soft Dice (a perfect regressor: the bound);
  - random_search: the gradient-free search, num_steps + 1 boxes around the initial one
    (the same number of decoder calls as SAMPOT), best by SAMPOT's score (evolve.blend);
  - gt_box: the ground-truth bounding box.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  from sampot_jax import prompts  # pylint: disable=g-import-not-at-top
  out = {}
  iou = evolve.evolve_prompts(sam_params, sam_config, scorer[0], variables, embeddings, frame,
                              images_small, boxes, dataclasses.replace(settings, objective="iou"),
                              rng=rng)
  out["iou_ascent_mask"], out["iou_ascent_prompt"] = iou.best_mask, iou.best_prompt
  size = images_small.shape[1:]
  targets_small = jax.image.resize(jnp.asarray(targets, jnp.float32),
                                   (targets.shape[0],) + tuple(size), "linear")
  bound = evolve.evolve_prompts(sam_params, sam_config, soft_dice_with_target, None, embeddings,
                                frame, targets_small, boxes,
                                dataclasses.replace(settings, iou_weight=0.0), rng=rng)
  out["true_dice_ascent_mask"] = bound.best_mask
  out["true_dice_ascent_prompt"] = bound.best_prompt
  gt = prompts.bounding_boxes(np.asarray(targets))
  masks, _ = predictor.prompt_masks(sam_params, sam_config, embeddings, frame, gt[:, None])
  out["gt_box_mask"], out["gt_box_prompt"] = masks[:, 0], gt
  k = settings.num_steps + 1
  seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
  candidates = np.asarray(boxes, np.float64)[:, None].repeat(k, axis=1)
  moved = prompts.rough_boxes(candidates.reshape(-1, 4), config.get("search_jitter", 0.1),
                              np.random.default_rng(seed), frame.original_size)
  candidates = np.concatenate([np.asarray(boxes)[:, None],
                               moved.reshape(len(candidates), k, 4)[:, 1:]], axis=1)
  scores, ious, dice = grid_maps(sam_params, sam_config, scorer[0], variables, embeddings, frame,
                                 images_small, targets, candidates, settings.slope,
                                 config.get("grid_chunk", 16))
  scores = evolve.blend(np.asarray(scores), np.asarray(ious), settings.iou_weight)
  best = np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf), axis=1)
  rows = np.arange(len(best))
  out["random_search_dice"] = np.asarray(dice)[rows, best]
  out["random_search_prompt"] = candidates[rows, best].astype(np.float32)
  return out
