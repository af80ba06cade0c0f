"""SAMPOT: move a prompt by gradient ascent on the regressor's score of SAM's mask.

The prompt is the only variable; SAM and the regressor are frozen (paper,
sections 2.1 and 3.3). A prompt is one vector of original-image pixels
(predictor.PROMPT_KINDS): a click (x, y) as in the paper, a box (x0, y0, x1, y1)
as LiteMedSAM takes, or both (six values). One step:

    low_res, iou = SAM decoder(embedding, prompt)         # embedding computed once
    soft = sigmoid(slope * crop_valid(low_res))           # near-binary, differentiable
    score = regressor(image_small, soft)                  # predicted Dice
    prompt <- constrain(prompt + Adam(grad score))        # step size in pixels, no decay

`constrain` keeps every point inside the image and boxes ordered (x0 < x1,
y0 < y1). `evolve_prompts` runs `num_steps` steps with `lax.scan` inside one
`jax.jit`, `vmap`ped over images and over starting points per image (the user's
prompt and `num_starts - 1` jittered restarts). With `population` > 1 the prompts are
first searched at random (the given prompt and population - 1 uniformly around it, all
scored) and the ascent starts from the best of them: the hybrid of docs/compare.md, which
reached the right neighbourhood faster than Adam alone. The best prompt is the
highest-scoring one anywhere on any trajectory, not the last one. A step whose
score or gradient is not finite stops that start (the prompt stays where it was;
later scores are recorded as NaN) and is reported in `nan_step`; NaN never
reaches the best prompt. `Settings.objective = "iou"` ascends SAM's own IoU
prediction instead of the regressor (a baseline).

The soft mask is SAM's low-res logits cropped to the valid (unpadded) region,
resized bilinearly to `image_small`'s size when they differ, then passed through
the steep sigmoid: cheaper than SAM's full post-processing to 1024 and back, and
differentiable all the way to the prompt.
"""
import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sampot_jax.runtime import settings as settings_lib
from sampot_jax.sam import frozen
from sampot_jax.sam import predictor
from sampot_jax.sampot import scorer as scorer_lib
from sampot_jax.sampot.scorer import Scorer

# SAMPOT's hyper-parameters: config.evolve's dataclass (fields, defaults and checks there).
Settings = settings_lib.Evolve


def settings_from_config(config) -> Settings:
  """A Settings from a config.evolve ConfigDict (or dict); unknown keys are errors."""
  return settings_lib.typed(Settings, config, "config.evolve")


@flax.struct.dataclass
class EvolveResult:
  """Per image (B images, R starts, T = num_steps + 1 trajectory points).

  Attributes:
    prompts: (B, R, T, D) float32, the prompts visited by each start (D: 2 for a
      click, 4 for a box, 6 for both; predictor.PROMPT_KINDS). With a population the first
      start begins at the population's best, not at the given prompt (initial_prompt).
    scores: (B, R, T) float32 score at each prompt (the regressor's, blended with SAM's IoU
      when settings.iou_weight > 0; NaN once stopped).
    ious: (B, R, T) float32 SAM's predicted IoU at each prompt.
    nan_step: (B, R) int32, the step whose score or gradient was not finite
      (the start stopped there), -1 when none.
    initial_prompt, best_prompt: (B, D) float32.
    initial_score, best_score: (B,) float32.
    initial_iou, best_iou: (B,) float32.
    initial_mask, best_mask: (B, H, W) bool at the original size.
    best_start, best_step: (B,) int32, where the best prompt lies.
    snapshot_steps: (B, K) int32, increasing steps of the best start's trajectory,
      best_step among them (K = num_snapshots).
    snapshot_masks: (B, K, H, W) bool, the masks there.
  """
  prompts: jax.Array
  scores: jax.Array
  ious: jax.Array
  nan_step: jax.Array
  initial_prompt: jax.Array
  best_prompt: jax.Array
  initial_score: jax.Array
  best_score: jax.Array
  initial_iou: jax.Array
  best_iou: jax.Array
  initial_mask: jax.Array
  best_mask: jax.Array
  best_start: jax.Array
  best_step: jax.Array
  snapshot_steps: jax.Array
  snapshot_masks: jax.Array

  def fields(self) -> dict:
    """{name: array} of every field (no copies)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def soft_mask(low_res: jax.Array, frame: predictor.ImageFrame, img_size: int,
              size: tuple[int, int], slope: float) -> jax.Array:
  """(..., L, L) SAM low-res logits -> (..., *size) float32 soft mask in [0, 1].

  The low-res frame covers the padded img_size square; only its top-left
  input_size * L / img_size part shows the image.
  """
  side = low_res.shape[-1]
  h = -(-frame.input_size[0] * side // img_size)
  w = -(-frame.input_size[1] * side // img_size)
  logits = low_res[..., :h, :w]
  if (h, w) != tuple(size):
    logits = jax.image.resize(logits, logits.shape[:-2] + tuple(size), "linear")
  return jax.nn.sigmoid(slope * logits)


def prompt_score(prompt, embedding, image_small, sam_params, score_variables, *, sam_config,
                 frame, score_fn, slope, decode_fn=predictor.decode_prompts, image_side=None):
  """One prompt on one image -> (score, SAM IoU), scalars; differentiable in `prompt`.

  prompt (D,) original pixels; embedding (g, g, C); image_small (S, S) in [0, 1];
  image_side: this image's predictor.image_side (one image, no batch axis), or None.
  """
  extra = {} if image_side is None else {
      "image_side": jax.tree.map(lambda x: x[None], image_side)}
  low_res, iou = decode_fn(sam_params, embedding[None], prompt[None], frame, sam_config, **extra)
  mask = soft_mask(low_res[0, 0], frame, sam_config.img_size, image_small.shape, slope)
  return score_fn(score_variables, image_small[None], mask[None])[0], iou[0, 0]


def _evolve_start(start, embedding, image_side, image_small, upper, step_scale, sam_params,
                  score_variables, *, sam_config, frame, score_fn, settings, decode_fn):
  """One start of one image -> (prompts (T, D), scores (T,), ious (T,), nan_step ()).

  upper (2,): the image's largest (x, y); step_scale (): multiplies Adam's steps and the
  smallest box side (Batch.step_scale)."""
  score_iou = functools.partial(
      prompt_score, embedding=embedding, image_small=image_small, sam_params=sam_params,
      score_variables=score_variables, sam_config=sam_config, frame=frame, score_fn=score_fn,
      slope=settings.slope, decode_fn=decode_fn, image_side=image_side)
  def objective(prompt):
    """-> (what Adam ascends, (what the best prompt is chosen by, score, SAM IoU))."""
    regressed, iou = score_iou(prompt)
    score = scorer_lib.blend(regressed, iou, settings.iou_weight)
    if settings.objective == "iou":  # SAM's own IoU head ascended and chosen by; score recorded
      return iou, (iou, score, iou)
    return (score if settings.ascend_blend else regressed), (score, score, iou)
  value_and_grad = jax.value_and_grad(objective, has_aux=True)
  tx = optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay)

  def step(carry, _):
    prompt, opt_state, alive = carry
    (ascended, (value, score, iou)), grad = value_and_grad(prompt)
    ok = jnp.isfinite(value) & jnp.isfinite(ascended) & jnp.all(jnp.isfinite(grad))
    updates, new_state = tx.update(-grad, opt_state, prompt)  # ascent
    moving = alive & ok
    # Adam's step is linear in its learning rate: scaling the update is Adam at lr x scale.
    moved = predictor.constrain_prompts(prompt + updates * step_scale, None,
                                        settings.min_box_size * step_scale, upper)
    new_prompt = jnp.where(moving, moved, prompt)
    new_state = jax.tree.map(lambda n, o: jnp.where(moving, n, o), new_state, opt_state)
    recorded = jnp.where(alive & jnp.isfinite(value), value, jnp.nan)
    return (new_prompt, new_state, moving), (prompt, recorded, score, iou, alive & ~ok)

  start = start.astype(jnp.float32)
  carry = (start, tx.init(start), jnp.array(True))
  # num_steps + 1 evaluations: the update after the last one is computed and
  # dropped, which keeps a single copy of the decoder in the compiled program.
  _, (prompts, objective_values, scores, ious, failed) = jax.lax.scan(
      step, carry, None, length=settings.num_steps + 1)
  nan_step = jnp.where(failed.any(), jnp.argmax(failed), -1).astype(jnp.int32)
  return prompts, objective_values, scores, ious, nan_step


@functools.partial(jax.jit, static_argnames=("sam_config", "frame", "score_fn", "settings",
                                             "decode_fn"))
def _evolve_batch(sam_params, score_variables, embeddings, images_small, prompts, uppers,
                  step_scales, rng, *, sam_config, frame, score_fn, settings, decode_fn):
  """Everything but the masks, in one program (eager ops would each compile)."""
  # SAM's decoder does part of its work on the image alone: done here once per image rather
  # than at every step (XLA does not hoist it out of the scan). Other segmenters get None.
  image_side = (predictor.image_side(sam_params, embeddings, sam_config)
                if decode_fn is predictor.decode_prompts else None)
  given = prompts
  if settings.population > 1:
    candidates = population_prompts(prompts, settings, frame.original_size, rng, uppers,
                                    step_scales)
    pick = functools.partial(_rank_value, sam_config=sam_config, frame=frame,
                             score_fn=score_fn, settings=settings, decode_fn=decode_fn)
    over_candidates = jax.vmap(pick, in_axes=(0,) + (None,) * 5)
    values, given_scores = jax.vmap(over_candidates, in_axes=(0, 0, 0, 0, None, None))(
        candidates, embeddings, image_side, images_small, sam_params, score_variables)
    values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
    prompts = candidates[jnp.arange(candidates.shape[0]), jnp.argmax(values, axis=1)]
  starts = starting_points(prompts, settings, frame.original_size, rng, uppers, step_scales)
  one = functools.partial(_evolve_start, sam_config=sam_config, frame=frame,
                          score_fn=score_fn, settings=settings, decode_fn=decode_fn)
  per_image = jax.vmap(one, in_axes=(0,) + (None,) * 7)                    # over starts
  batched = jax.vmap(per_image, in_axes=(0, 0, 0, 0, 0, 0, None, None))    # over images
  prompts, values, scores, ious, nan_step = batched(starts, embeddings, image_side, images_small,
                                                   uppers, step_scales, sam_params,
                                                   score_variables)
  # The best prompt by the objective (the score, or SAM's IoU for that baseline); stopped
  # steps are NaN and never chosen.
  scores = jnp.where(jnp.isnan(values), jnp.nan, scores)
  b, r, t = scores.shape
  ranked = jnp.where(jnp.isfinite(values), values, -jnp.inf).reshape(b, r * t)
  flat = jnp.argmax(ranked, axis=1)  # all -inf (no finite value) -> 0, the given prompt
  best_start, best_step = flat // t, flat % t
  rows = jnp.arange(b)
  # Snapshots: evenly spaced steps, the nearest one moved onto the best step.
  even = jnp.round(jnp.linspace(0, t - 1, settings.num_snapshots)).astype(jnp.int32)
  nearest = jnp.argmin(jnp.abs(even[None] - best_step[:, None]), axis=1)
  steps = jnp.sort(jnp.where(jnp.arange(settings.num_snapshots)[None] == nearest[:, None],
                             best_step[:, None], even[None]), axis=1).astype(jnp.int32)
  initial_score = given_scores[:, 0] if settings.population > 1 else scores[:, 0, 0]
  return dict(prompts=prompts, scores=scores, ious=ious, nan_step=nan_step,
              initial_prompt=given.astype(jnp.float32),
              best_prompt=prompts[rows, best_start, best_step],
              initial_score=initial_score, best_score=scores[rows, best_start, best_step],
              best_start=best_start.astype(jnp.int32), best_step=best_step.astype(jnp.int32),
              snapshot_steps=steps, snapshot_prompts=prompts[rows[:, None], best_start[:, None],
                                                             steps])


@functools.partial(jax.jit, static_argnames=("sam_config", "frame", "decode_fn"))
def _prompt_masks(sam_params, embeddings, initial_prompt, best_prompt, snapshot_prompts, *,
                  sam_config, frame, decode_fn):
  prompts = jnp.concatenate([initial_prompt[:, None], best_prompt[:, None], snapshot_prompts], 1)
  masks, ious = predictor.prompt_masks_jit(sam_params, embeddings, prompts,
                                           sam_config=sam_config, frame=frame,
                                           multimask_output=False, decode_fn=decode_fn)
  return dict(initial_mask=masks[:, 0], best_mask=masks[:, 1], initial_iou=ious[:, 0],
              best_iou=ious[:, 1], snapshot_masks=masks[:, 2:])


def _rank_value(prompt, embedding, image_side, image_small, sam_params, score_variables, *,
                sam_config, frame, score_fn, settings, decode_fn):
  """One prompt -> (what the best prompt is chosen by, the blended score), as in the ascent."""
  regressed, iou = prompt_score(prompt, embedding, image_small, sam_params, score_variables,
                                sam_config=sam_config, frame=frame, score_fn=score_fn,
                                slope=settings.slope, decode_fn=decode_fn, image_side=image_side)
  score = scorer_lib.blend(regressed, iou, settings.iou_weight)
  return (iou if settings.objective == "iou" else score), score


def population_prompts(prompts, settings: Settings, original_size: tuple[int, int],
                       rng: jax.Array, uppers: jax.Array, step_scales: jax.Array) -> jax.Array:
  """(B, D) prompts -> (B, P, D), P = settings.population: each prompt, then P - 1 with every
  coordinate moved by U(-1, 1) x population_jitter x the box's width/height (a click alone:
  the image's, uppers + 1), constrained inside the image. rng: one key or (B,) keys (folded
  apart from the restarts' draws)."""
  prompts = jnp.asarray(prompts, jnp.float32)
  b, d = prompts.shape
  shape = (settings.population - 1, d)
  if rng.ndim == 1:
    draws = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, 1), shape,
                                                    minval=-1.0, maxval=1.0))(rng)
  else:
    draws = jax.random.uniform(jax.random.fold_in(rng, 1), (b,) + shape, minval=-1.0,
                               maxval=1.0)
  extent = prompts[:, 2:4] - prompts[:, 0:2] if d >= 4 else uppers + 1.0  # (B, 2)
  scale = jnp.tile(extent, d // 2)[:, None]
  moved = prompts[:, None] + draws * settings.population_jitter * scale
  min_box = (settings.min_box_size * step_scales)[:, None, None]
  moved = predictor.constrain_prompts(moved, original_size, min_box, uppers[:, None])
  return jnp.concatenate([prompts[:, None], moved], axis=1)


def starting_points(prompts, settings: Settings, original_size: tuple[int, int],
                    rng: jax.Array | None = None, uppers: jax.Array | None = None,
                    step_scales: jax.Array | None = None) -> jax.Array:
  """(B, D) prompts -> (B, R, D): each prompt, then R - 1 restarts with every coordinate
  jittered by N(0, restart_jitter) pixels (then constrained, see predictor.constrain_prompts).
  uppers (B, 2), step_scales (B,): as Batch's (None: the frame's image, 1)."""
  prompts = jnp.asarray(prompts, jnp.float32)
  if settings.num_starts == 1:
    return prompts[:, None]
  rng = jax.random.key(settings.seed) if rng is None else rng
  scale = 1.0 if step_scales is None else jnp.asarray(step_scales)[:, None, None]
  shape = (settings.num_starts - 1, prompts.shape[1])
  if rng.ndim == 1:  # one key per image: an image's restarts do not depend on its batch
    draws = jax.vmap(lambda key: jax.random.normal(key, shape))(rng)
  else:
    draws = jax.random.normal(rng, (prompts.shape[0],) + shape)
  noise = settings.restart_jitter * scale * draws
  min_box = settings.min_box_size * scale  # (B, 1, 1): per image, over its restarts
  restarts = predictor.constrain_prompts(prompts[:, None] + noise, original_size, min_box,
                                         None if uppers is None else uppers[:, None])
  return jnp.concatenate([prompts[:, None], restarts], axis=1)


@dataclasses.dataclass(frozen=True)
class Batch:
  """B images and their prompts (host arrays, or device arrays sharded over the batch axis).

  Attributes:
    embeddings: (B, g, g, C) float32 from predictor.encode_images (or the cache).
    frame: the ImageFrame of the batch (predictor.encode_images, or predictor.frame_for).
    images_small: (B, S, S) float32 in [0, 1], the images as the scorer sees them.
    prompts: (B, D) in original pixels, inside the image: (x, y) clicks, (x0, y0, x1, y1)
      boxes, or both (predictor.PROMPT_KINDS).
    uppers: (B, 2) each image's largest (x, y) in the frame's pixels, when images of several
      sizes share one frame (the model's own: prompts in its input pixels, tasks/refine.py);
      None: predictor.click_upper(frame.original_size) for every image.
    step_scales: (B,) each image's Adam step, restart jitter and smallest box side, as a
      multiple of the settings' (which are then pixels of a reference image); None: 1.
  """
  embeddings: jax.Array
  frame: predictor.ImageFrame
  images_small: jax.Array
  prompts: jax.Array
  uppers: jax.Array | None = None
  step_scales: jax.Array | None = None


def evolve_prompts(sam: frozen.Sam, scorer: Scorer, batch: Batch,
                   settings: Settings = Settings(), rng: jax.Array | None = None,
                   masks: bool = True) -> EvolveResult:
  """Evolves one prompt per image; one compiled call for the whole batch.

  Args:
    sam: the frozen segmenter (sam.frozen.Sam; its `decode` may be another model).
    scorer: what is ascended (sampot.scorer.Scorer; its `fn` is a static argument of the
      compiled loop, so keep one object: a new one recompiles).
    batch: the images, their embeddings and prompts (Batch).
    settings: see Settings.
    rng: key for the restarts, or (B,) keys (one per image); default
      jax.random.key(settings.seed).

  Returns:
    EvolveResult (jax arrays; the batch axis follows the inputs' sharding). With
    masks=False the masks and their IoUs (initial_/best_mask, snapshot_masks, initial_/best_iou)
    are None: not decoded, for a caller that decodes the prompts itself (tasks/refine.py).
  """
  sam_params, sam_config, decode_fn = sam.params, sam.config, sam.decode
  embeddings, frame, images_small, prompts = (batch.embeddings, batch.frame,
                                              batch.images_small, batch.prompts)
  b = embeddings.shape[0]
  if embeddings.ndim != 4:
    raise ValueError(f"embeddings has shape {embeddings.shape}; expected (B, g, g, C) from "
                     "predictor.encode_images.")
  if images_small.ndim != 3 or images_small.shape[0] != b:
    raise ValueError(f"images_small has shape {images_small.shape}; expected ({b}, S, S) "
                     "float in [0, 1], one per embedding.")
  if not jnp.issubdtype(images_small.dtype, jnp.floating):
    raise ValueError(f"images_small has dtype {images_small.dtype}; pass float images in "
                     "[0, 1] (e.g. uint8 / 255).")
  if np.ndim(prompts) != 2 or np.shape(prompts)[0] != b:
    raise ValueError(f"prompts have shape {np.shape(prompts)}; expected ({b}, D): one (x, y) "
                     "click, (x0, y0, x1, y1) box or both per image.")
  kind = predictor.prompt_kind(np.shape(prompts)[1])
  if getattr(prompts, "is_fully_addressable", True):
    # Each image's own extent when sizes share a frame: it may pass the frame's last pixel.
    predictor.check_prompts(prompts, frame.original_size, uppers=batch.uppers)
  predictor.warn_if_untrained(sam_config, kind)
  config = ml_collections.FrozenConfigDict(sam_config)
  uppers = (jnp.tile(jnp.array(predictor.click_upper(frame.original_size), jnp.float32), (b, 1))
            if batch.uppers is None else jnp.asarray(batch.uppers, jnp.float32))
  step_scales = (jnp.ones((b,), jnp.float32) if batch.step_scales is None
                 else jnp.asarray(batch.step_scales, jnp.float32))
  out = _evolve_batch(
      sam_params, scorer.variables, embeddings, jnp.asarray(images_small, jnp.float32),
      jnp.asarray(prompts, jnp.float32), uppers, step_scales,
      jax.random.key(settings.seed) if rng is None else rng,
      sam_config=config, frame=frame, score_fn=scorer.fn, settings=settings,
      decode_fn=decode_fn)
  snapshot_prompts = out.pop("snapshot_prompts")
  if not masks:
    return EvolveResult(**dict.fromkeys(("initial_mask", "best_mask", "initial_iou", "best_iou",
                                         "snapshot_masks")), **out)
  decoded = _prompt_masks(sam_params, embeddings, out["initial_prompt"], out["best_prompt"],
                          snapshot_prompts, sam_config=config, frame=frame, decode_fn=decode_fn)
  return EvolveResult(**decoded, **out)


def compiled_programs() -> int:
  """How many programs `evolve_prompts`' jitted core holds (one per shape and setting)."""
  return _evolve_batch._cache_size()  # pylint: disable=protected-access
