"""SAMPOT and its peers on box prompts, each at a budget of decoder evaluations (task 'compare').

Every method is one function over a batch of B images of one size:

    choice = METHODS[name](sam, scorer, embeddings, frame, images_small, boxes, budget, rng,
                           setup, targets=None)

embeddings (B, g, g, C) float32; images_small (B, S, S) float32 in [0, 1]; boxes (B, 4) float32,
the rough boxes in original pixels; budget: decoder evaluations per image (int >= 1); rng: a
jax key; setup: Setup (SAMPOT's settings, the peers', the cost of an Adam step); targets (B, H, W)
bool, read by the bounds only. It returns a Choice: the box each image keeps (B, 4), its mask
(B, H, W) bool at the original size, and the decoder evaluations used per image (<= budget).

Budget accounting. One decoder evaluation is a forward pass of the mask decoder for one box on
one image, with the regressor's score of its mask where the method ranks by that score. One Adam
step (forward and backward through the decoder and the regressor) costs `setup.step_cost`
evaluations, measured in the same run (measure_step_cost). evolve's scan of n steps evaluates
n + 1 boxes with their gradients, so SAMPOT with budget B runs adam_steps(B) = floor(B / cost) - 1
steps, and 0 steps is the initial box (1 evaluation). Decoding the kept box's mask again at the
original size is not counted: the method saw that mask when it ranked the box.

The score wherever a method ranks boxes by SAMPOT's score is the regressor blended with the
model's IoU head by settings.iou_weight (scorer.blend), as the evaluate task ranks.
"""
import dataclasses
import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sampot_jax import errors
from sampot_jax.sam import frozen
from sampot_jax.sam import predictor
from sampot_jax.sam import processing
from sampot_jax.sampot import baselines
from sampot_jax.sampot import evolve
from sampot_jax.sampot import prompts as prompts_lib
from sampot_jax.sampot import scorer as scorer_lib
from sampot_jax.sampot.scorer import Scorer


@dataclasses.dataclass(frozen=True)
class Settings:
  """config.peers: the peers' own settings (box sizes are the rough box's width/height).

  Attributes:
    sam_u_jitter: SAM-U's boxes: each coordinate moved uniformly by up to this x size.
    medsam_u_sigma: MedSAM-U's boxes: each coordinate moved by N(0, this x size).
    saif_jitter: SAIF's box perturbations, uniform as SAM-U's.
    saif_delta: SAIF's threshold perturbation, in logits (SAM's stability-score offset: 1).
    search_jitter: random search's (and the hybrid's population's) boxes, uniform.
    cma_sigma: CMA-ES's initial step size, in box sizes.
    cma_popsize: CMA-ES's largest population (Hansen's default for 4 variables is 8).
    map_side: side of the probability maps MedSAM-U and SAIF judge their candidates on.
    chunk: boxes decoded together per image (bounds the memory).
  """
  sam_u_jitter: float = 0.1
  medsam_u_sigma: float = 0.05
  saif_jitter: float = 0.1
  saif_delta: float = 1.0
  search_jitter: float = 0.1
  cma_sigma: float = 0.05
  cma_popsize: int = 8
  map_side: int = 128
  chunk: int = 16

  def __post_init__(self):
    for name in ("sam_u_jitter", "medsam_u_sigma", "saif_jitter", "saif_delta", "search_jitter",
                 "cma_sigma"):
      if not getattr(self, name) > 0:
        raise errors.ConfigError(f"config.peers.{name}={getattr(self, name)}; it must be > 0.")
    for name, low in (("cma_popsize", 2), ("map_side", 8), ("chunk", 1)):
      if getattr(self, name) < low:
        raise errors.ConfigError(f"config.peers.{name}={getattr(self, name)}; it must be "
                                 f">= {low}.")


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every method is given besides the batch.

  Attributes:
    evolve: SAMPOT's settings (config.evolve): slope, iou_weight, Adam's; num_steps is set
      from the budget.
    step_cost: decoder evaluations one Adam step costs (>= 1; measure_step_cost).
    peers: Settings.
  """
  evolve: evolve.Settings
  step_cost: float
  peers: Settings = Settings()


class Choice(NamedTuple):
  """boxes (B, 4) float32 kept; masks (B, H, W) bool; evals: decoder evaluations per image."""
  boxes: Any
  masks: Any
  evals: float


# ----------------------------------------------------------------------------
# Budget accounting.


def adam_steps(budget: float, step_cost: float, starts: int = 1) -> int:
  """Adam steps a budget buys: floor(budget / (step_cost x starts)) - 1 (evolve's n steps are
  n + 1 forward-backward passes per start), 0 when it buys none (the initial box)."""
  return max(math.floor(budget / (step_cost * starts)) - 1, 0)


def adam_evals(steps: int, step_cost: float, starts: int = 1) -> float:
  """Decoder evaluations of `steps` Adam steps: 1 (the initial box) when there are none."""
  return 1.0 if steps == 0 else float((steps + 1) * step_cost * starts)


def cma_schedule(budget: int, popsize: int) -> tuple[int, int]:
  """(population, generations) of CMA-ES for a budget: the initial box, then generations x
  population <= budget - 1 evaluations, at least two generations once the budget allows two
  of two, the population near `popsize`. (0, 0): the budget buys no search."""
  spare = int(budget) - 1
  if spare < 2:
    return 0, 0
  if spare < 4:
    return spare, 1
  generations = max(2, spare // popsize)
  return spare // generations, generations


# ----------------------------------------------------------------------------
# Compiled pieces: scores, probability maps, masks.


def _image_side(sam_params, embeddings, sam_config, decode_fn):
  """SAM's prompt-independent decoder work per image (as evolve), None for other segmenters."""
  if decode_fn is predictor.decode_prompts:
    return predictor.image_side(sam_params, embeddings, sam_config)
  return None


def _padded_map(fn, xs, chunk: int):
  """lax.map of fn over axis 0 of xs, `chunk` at a time; whole chunks only (a remainder would
  be a second copy of the decoder in the program), the padding's results dropped."""
  k = xs.shape[0]
  size = max(1, min(chunk, k))
  pad = (-k) % size
  if pad:
    xs = jnp.concatenate([xs, jnp.repeat(xs[-1:], pad, axis=0)])
  out = jax.lax.map(fn, xs, batch_size=size)
  return jax.tree.map(lambda x: x[:k], out)


def _score_core(sam_params, score_variables, embeddings, images_small, candidates, *, sam_config,
                frame, score_fn, slope, iou_weight, decode_fn, chunk, grad=False):
  """(B, K, 4) boxes -> SAMPOT's blended score (B, K) (and its gradient (B, K, 4) with grad):
  evolve.prompt_score, the very function Adam differentiates."""
  sides = _image_side(sam_params, embeddings, sam_config, decode_fn)

  def one_image(embedding, side, image_small, boxes):
    def value(box):
      score, iou = evolve.prompt_score(
          box, embedding, image_small, sam_params, score_variables, sam_config=sam_config,
          frame=frame, score_fn=score_fn, slope=slope, decode_fn=decode_fn, image_side=side)
      return scorer_lib.blend(score, iou, iou_weight)
    return _padded_map(jax.value_and_grad(value) if grad else value, boxes, chunk)
  return jax.vmap(one_image)(embeddings, sides, images_small, candidates)


_STATIC = ("sam_config", "frame", "score_fn", "slope", "iou_weight", "decode_fn", "chunk")
_scores_jit = jax.jit(_score_core, static_argnames=_STATIC + ("grad",))


def candidate_scores(sam: frozen.Sam, scorer: Scorer, embeddings, frame, images_small,
                     candidates, settings: evolve.Settings, chunk: int = 16, grad: bool = False):
  """SAMPOT's score of K boxes per image, one compiled call: candidates (B, K, 4) -> (B, K)
  float32 (with grad, also d score / d box (B, K, 4): what one Adam step computes)."""
  return _scores_jit(sam.params, scorer.variables, embeddings, jnp.asarray(images_small),
                     jnp.asarray(candidates, jnp.float32),
                     sam_config=ml_collections.FrozenConfigDict(sam.config), frame=frame,
                     score_fn=scorer.fn, slope=float(settings.slope),
                     iou_weight=float(settings.iou_weight), decode_fn=sam.decode,
                     chunk=int(chunk), grad=grad)


@functools.partial(jax.jit, static_argnames=("sam_config", "frame", "decode_fn", "side",
                                             "chunk"))
def _probability_maps(sam_params, embeddings, candidates, *, sam_config, frame, decode_fn, side,
                      chunk):
  """(B, K, 4) boxes -> (B, K, side, side) float32: the model's probability sigmoid(logits) of
  each box's mask over the image (the valid low-res region, resized)."""
  sides = _image_side(sam_params, embeddings, sam_config, decode_fn)

  def one_image(embedding, image_side, boxes):
    extra = {} if image_side is None else {
        "image_side": jax.tree.map(lambda x: x[None], image_side)}

    def probability(box):
      low_res, _ = decode_fn(sam_params, embedding[None], box[None], frame, sam_config, **extra)
      return evolve.soft_mask(low_res[0, 0], frame, sam_config.img_size, (side, side), 1.0)
    return _padded_map(probability, boxes, chunk)
  return jax.vmap(one_image)(embeddings, sides, candidates)


def probability_maps(sam: frozen.Sam, embeddings, frame, candidates, side: int, chunk: int = 16):
  """See _probability_maps; one compiled call."""
  return _probability_maps(sam.params, embeddings, jnp.asarray(candidates, jnp.float32),
                           sam_config=ml_collections.FrozenConfigDict(sam.config), frame=frame,
                           decode_fn=sam.decode, side=int(side), chunk=int(chunk))


@functools.partial(jax.jit, static_argnames=("sam_config", "frame", "decode_fn"))
def _mean_probability(sam_params, embeddings, candidates, *, sam_config, frame, decode_fn):
  """(B, K, 4) boxes -> (B, H, W) float32 mean of sigmoid(logits at the original size): one box
  per image at a time, so memory does not grow with K."""
  proc = processing.processing_for(sam_config)
  sides = _image_side(sam_params, embeddings, sam_config, decode_fn)
  extra = {} if sides is None else {"image_side": sides}

  def add(total, boxes):  # boxes (B, 4): the k-th box of every image
    low_res, _ = decode_fn(sam_params, embeddings, boxes, frame, sam_config, **extra)
    logits = proc.postprocess_masks(low_res, frame.input_size, frame.original_size,
                                    sam_config.img_size)
    return total + jax.nn.sigmoid(logits[:, 0]), None
  start = jnp.zeros((embeddings.shape[0],) + tuple(frame.original_size), jnp.float32)
  total, _ = jax.lax.scan(add, start, jnp.swapaxes(candidates, 0, 1))
  return total / candidates.shape[1]


def score_parts(sam: frozen.Sam, scorer: Scorer, embeddings, frame, images_small, candidates,
                settings: evolve.Settings, chunk: int = 16) -> dict:
  """The two parts of SAMPOT's score of K boxes per image: (B, K, 4) -> {"regressor": (B, K),
  "iou": (B, K)} float numpy, and "score": their blend by settings.iou_weight (what the methods
  rank by). Two compiled calls (the regressor alone, the IoU head alone)."""
  part = lambda w: np.asarray(candidate_scores(
      sam, scorer, embeddings, frame, images_small, candidates,
      dataclasses.replace(settings, iou_weight=w), chunk), np.float64)
  regressor, iou = part(0.0), part(1.0)
  return {"regressor": regressor, "iou": iou,
          "score": np.asarray(scorer_lib.blend(regressor, iou, float(settings.iou_weight)))}


def box_masks(sam: frozen.Sam, embeddings, frame, boxes):
  """(B, 4) boxes -> (B, H, W) bool masks at the original size (one compiled call)."""
  masks, _ = predictor.prompt_masks(sam.params, sam.config, embeddings, frame,
                                    jnp.asarray(boxes, jnp.float32)[:, None],
                                    decode_fn=sam.decode)
  return masks[:, 0]


def _numpy_rng(rng) -> np.random.Generator:
  """A numpy generator seeded from a jax key (as baselines.box_methods' random search)."""
  return np.random.default_rng(int(jax.random.randint(rng, (), 0, 2**31 - 1)))


def gaussian_boxes(boxes, k: int, sigma: float, rng: np.random.Generator,
                   original_size: tuple[int, int], min_size: float = 2.0) -> np.ndarray:
  """(B, 4) boxes -> (B, k, 4) float32: each box, then k - 1 boxes with every coordinate moved
  by N(0, sigma x the box's width/height), kept inside the image (predictor.constrain_prompts)."""
  boxes = np.asarray(boxes, np.float64)
  size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
  noise = rng.normal(0.0, 1.0, (len(boxes), k - 1, 4)) * sigma * size[:, None]
  moved = np.asarray(predictor.constrain_prompts(
      jnp.asarray(boxes[:, None] + noise, jnp.float32), original_size, min_size))
  return np.concatenate([boxes[:, None].astype(np.float32), moved], axis=1)


def _best(values, candidates):
  """The candidate with the highest finite value per image: (B, K), (B, K, 4) -> (B, 4)."""
  values = np.asarray(values)
  index = np.argmax(np.where(np.isfinite(values), values, -np.inf), axis=1)
  return np.asarray(candidates)[np.arange(len(index)), index]


# ----------------------------------------------------------------------------
# The methods. Each: (sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
# targets=None) -> Choice.


def initial(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
            targets=None) -> Choice:
  """The user's rough box as drawn: 1 evaluation whatever the budget."""
  del scorer, images_small, budget, rng, setup, targets
  return Choice(np.asarray(boxes, np.float32), box_masks(sam, embeddings, frame, boxes), 1.0)


def multimask(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
              targets=None) -> Choice:
  """SAM's three multimask outputs for the rough box, the one its IoU head rates highest
  (Kirillov et al. 2023, SAM's own answer to ambiguity; baselines.multimask_choice). One decoder
  pass gives all three: 1 evaluation whatever the budget."""
  del scorer, images_small, budget, rng, setup, targets
  masks, _, _ = baselines.multimask_choice(sam, embeddings, frame, boxes)
  return Choice(np.asarray(boxes, np.float32), masks, 1.0)


def sam_u(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
          targets=None) -> Choice:
  """SAM-U (Deng et al. 2023, "SAM-U: Multi-box prompts triggered uncertainty estimation for
  reliable SAM in medical image", arXiv 2307.04973): K jittered boxes as test-time
  augmentation, the model's probabilities averaged, the mask where the mean exceeds 0.5.

  Left open by the paper: how far and how the boxes move, and whether the user's box is one of
  them. Chosen: K = budget boxes, the rough box itself and K - 1 with each coordinate moved
  uniformly by up to peers.sam_u_jitter x its width/height (baselines.random_boxes);
  probabilities averaged at the original size. The box kept is the rough box (SAM-U moves no
  box); its pixel uncertainty map is not used here.
  """
  del scorer, images_small, targets
  k = int(budget)
  candidates = baselines.random_boxes(boxes, k, setup.peers.sam_u_jitter, _numpy_rng(rng),
                                      frame.original_size)
  mean = _mean_probability(sam.params, embeddings, jnp.asarray(candidates, jnp.float32),
                           sam_config=ml_collections.FrozenConfigDict(sam.config), frame=frame,
                           decode_fn=sam.decode)
  return Choice(np.asarray(boxes, np.float32), mean > 0.5, float(k))


def binary_entropy(p):
  """Mean over the last two axes of the pixels' entropy -p log p - (1-p) log(1-p), in nats."""
  p = jnp.clip(p, 1e-6, 1 - 1e-6)
  return -jnp.mean(p * jnp.log(p) + (1 - p) * jnp.log1p(-p), axis=(-2, -1))


def medsam_u(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
             targets=None) -> Choice:
  """MedSAM-U (Zhou et al. 2024, "MedSAM-U: Uncertainty-guided auto multi-prompt adaptation for
  reliable MedSAM", arXiv 2409.00924), training-free part: boxes perturbed by Gaussian noise,
  the prompt chosen by the uncertainty of its prediction.

  Left open here: the paper trains a multi-prompt adapter (MPA-MedSAM) and adapts prompts with
  it; the model here is frozen, so only the uncertainty-guided choice remains, and the paper's
  noise scale and uncertainty summary are not fixed for this model. Chosen: K = budget boxes,
  the rough box and K - 1 with each coordinate moved by N(0, peers.medsam_u_sigma x size); the
  box kept has the lowest mean pixel entropy of its own probability map (peers.map_side).
  """
  del scorer, images_small, targets
  k = int(budget)
  candidates = gaussian_boxes(boxes, k, setup.peers.medsam_u_sigma, _numpy_rng(rng),
                              frame.original_size, setup.evolve.min_box_size)
  maps = probability_maps(sam, embeddings, frame, candidates, setup.peers.map_side,
                          setup.peers.chunk)
  chosen = _best(-binary_entropy(maps), candidates)
  return Choice(chosen, box_masks(sam, embeddings, frame, chosen), float(k))


def stability_consistency(maps, delta: float):
  """(B, K, s, s) probabilities -> (B, K) SAIF-style score: stability x consistency.

  stability: IoU of the mask at logit +delta with the mask at -delta (SAM's stability score);
  consistency: mean IoU of the mask at 0 with the other candidates' masks (1 with one). An
  empty mask scores 0.
  """
  hi, lo = jax.nn.sigmoid(delta), jax.nn.sigmoid(-delta)
  count = lambda m: jnp.sum(m, axis=(-2, -1)).astype(jnp.float32)
  n_hi, n_lo = count(maps > hi), count(maps > lo)
  stability = jnp.where(n_lo > 0, n_hi / jnp.maximum(n_lo, 1.0), 0.0)
  masks = (maps > 0.5).reshape(maps.shape[:2] + (-1,)).astype(jnp.float32)
  inter = jnp.einsum("bkp,bjp->bkj", masks, masks)
  area = masks.sum(-1)
  union = area[:, :, None] + area[:, None, :] - inter
  iou = jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0)
  k = maps.shape[1]
  others = (iou.sum(-1) - jnp.diagonal(iou, axis1=1, axis2=2)) / max(k - 1, 1)
  consistency = others if k > 1 else jnp.ones_like(stability)
  return stability * consistency


def saif(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
         targets=None) -> Choice:
  """SAIF-style stability selection (Wu et al. 2026, "SAIF: A stability-aware inference
  framework for medical image segmentation with Segment Anything Model", arXiv 2603.13533): box
  and threshold perturbations, each candidate scored by how stable its mask is under a threshold
  change and how consistent it is with the other candidates' masks.

  SAIF fuses the candidates in probability space, weighted by that score; here the best
  candidate is kept instead (issue 22's choice: a box, as every other method returns). Not
  fixed here: the perturbation sizes, the threshold step and how stability and consistency
  combine. Chosen: K = budget boxes (the rough box and K - 1 moved uniformly by up to
  peers.saif_jitter x size), thresholds at logits +-peers.saif_delta (SAM's stability offset),
  score = stability x mean IoU with the others (stability_consistency) on peers.map_side maps;
  the best candidate's box and its own mask kept.
  """
  del scorer, images_small, targets
  k = int(budget)
  candidates = baselines.random_boxes(boxes, k, setup.peers.saif_jitter, _numpy_rng(rng),
                                      frame.original_size)
  maps = probability_maps(sam, embeddings, frame, candidates, setup.peers.map_side,
                          setup.peers.chunk)
  chosen = _best(stability_consistency(maps, setup.peers.saif_delta), candidates)
  return Choice(chosen, box_masks(sam, embeddings, frame, chosen), float(k))


def random_search(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
                  targets=None) -> Choice:
  """Random search on SAMPOT's score (as baselines.box_methods' random_search): the rough box
  and budget - 1 boxes moved uniformly by up to peers.search_jitter x size, the best by the
  blended score kept. Every box is one evaluation."""
  del targets
  k = int(budget)
  candidates = baselines.random_boxes(boxes, k, setup.peers.search_jitter, _numpy_rng(rng),
                                      frame.original_size)
  scores = candidate_scores(sam, scorer, embeddings, frame, images_small, candidates,
                            setup.evolve, setup.peers.chunk)
  chosen = _best(scores, candidates)
  return Choice(chosen, box_masks(sam, embeddings, frame, chosen), float(k))


def cma_es_maximize(objective, x0, sigma0: float, popsize: int, generations: int, key):
  """Separable CMA-ES (Ros and Hansen 2008, "A simple modification in CMA-ES achieving linear
  time and space complexity"; Hansen 2016, "The CMA evolution strategy: a tutorial") maximising
  B independent problems at once, traceable (lax.scan over generations).

  Args:
    objective: (B, P, n) points -> (B, P) values (non-finite: worst).
    x0: (B, n) the starting means; sigma0: the initial step size.
    popsize, generations: static ints (popsize >= 2).
    key: a jax key.

  Returns:
    (best point (B, n), its value (B,)) over every point evaluated, x0 included:
    1 + popsize x generations evaluations per problem.
  """
  b, n = x0.shape
  lam, mu = popsize, popsize // 2
  w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
  w = w / w.sum()
  mueff = 1.0 / float(np.sum(w**2))
  cs = (mueff + 2) / (n + mueff + 5)
  ds = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
  cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
  c1 = 2 / ((n + 1.3) ** 2 + mueff)
  cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
  # Separable: the diagonal alone is learnt, (n + 2) / 3 times faster.
  c1, cmu = c1 * (n + 2) / 3, cmu * (n + 2) / 3
  cmu = min(cmu, 1 - c1)
  chin = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
  w = jnp.asarray(w, jnp.float32)
  finite = lambda f: jnp.where(jnp.isfinite(f), f, -jnp.inf)
  rows = jnp.arange(b)
  f0 = finite(objective(x0[:, None])[:, 0])

  def generation(state, g):
    mean, sigma, c, ps, pc, best_x, best_f = state
    z = jax.random.normal(jax.random.fold_in(key, g), (b, lam, n))
    y = jnp.sqrt(c)[:, None] * z
    x = mean[:, None] + sigma[:, None, None] * y
    f = finite(objective(x))
    order = jnp.argsort(-f, axis=1)[:, :mu]
    y_sel = jnp.take_along_axis(y, order[..., None], axis=1)
    z_sel = jnp.take_along_axis(z, order[..., None], axis=1)
    yw = jnp.einsum("m,bmn->bn", w, y_sel)
    zw = jnp.einsum("m,bmn->bn", w, z_sel)
    mean = mean + sigma[:, None] * yw
    ps = (1 - cs) * ps + math.sqrt(cs * (2 - cs) * mueff) * zw
    norm = jnp.linalg.norm(ps, axis=1)
    hs = (norm / jnp.sqrt(1 - (1 - cs) ** (2 * (g + 1.0))) < (1.4 + 2 / (n + 1)) * chin)
    hs = hs.astype(jnp.float32)[:, None]
    pc = (1 - cc) * pc + hs * math.sqrt(cc * (2 - cc) * mueff) * yw
    c = ((1 - c1 - cmu) * c + c1 * (pc**2 + (1 - hs) * cc * (2 - cc) * c)
         + cmu * jnp.einsum("m,bmn->bn", w, y_sel**2))
    sigma = sigma * jnp.exp((cs / ds) * (norm / chin - 1))
    top = jnp.argmax(f, axis=1)
    better = f[rows, top] > best_f
    best_x = jnp.where(better[:, None], x[rows, top], best_x)
    best_f = jnp.where(better, f[rows, top], best_f)
    return (mean, sigma, c, ps, pc, best_x, best_f), None

  state = (x0, jnp.full((b,), sigma0, jnp.float32), jnp.ones_like(x0), jnp.zeros_like(x0),
           jnp.zeros_like(x0), x0, f0)
  state, _ = jax.lax.scan(generation, state, jnp.arange(generations))
  return state[5], state[6]


@functools.partial(jax.jit, static_argnames=_STATIC + ("popsize", "generations", "sigma0",
                                                      "min_box"))
def _cma_boxes(sam_params, score_variables, embeddings, images_small, boxes, key, *, sam_config,
               frame, score_fn, slope, iou_weight, decode_fn, chunk, popsize, generations,
               sigma0, min_box):
  # Coordinates in units of the rough box's width/height, 0 at the rough box.
  scale = jnp.maximum(jnp.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1), 1.0)
  to_boxes = lambda x: predictor.constrain_prompts(boxes[:, None] + x * scale[:, None],
                                                   frame.original_size, min_box)
  objective = lambda x: _score_core(
      sam_params, score_variables, embeddings, images_small, to_boxes(x), sam_config=sam_config,
      frame=frame, score_fn=score_fn, slope=slope, iou_weight=iou_weight, decode_fn=decode_fn,
      chunk=chunk)
  best, _ = cma_es_maximize(objective, jnp.zeros_like(boxes), sigma0, popsize, generations, key)
  return to_boxes(best[:, None])[:, 0]


def cma_es(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
           targets=None) -> Choice:
  """CMA-ES on SAMPOT's score: separable CMA-ES (cma_es_maximize) over the 4 corners, in units
  of the rough box's size from the rough box, step size peers.cma_sigma; the population and
  generations from cma_schedule (1 + population x generations <= budget evaluations); the best
  box evaluated kept (the rough box included). Samples outside the image are scored where
  predictor.constrain_prompts puts them."""
  del targets
  popsize, generations = cma_schedule(budget, setup.peers.cma_popsize)
  if generations == 0:
    return initial(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup)
  chosen = _cma_boxes(sam.params, scorer.variables, embeddings, jnp.asarray(images_small),
                      jnp.asarray(boxes, jnp.float32), rng,
                      sam_config=ml_collections.FrozenConfigDict(sam.config), frame=frame,
                      score_fn=scorer.fn, slope=float(setup.evolve.slope),
                      iou_weight=float(setup.evolve.iou_weight), decode_fn=sam.decode,
                      chunk=setup.peers.chunk, popsize=popsize, generations=generations,
                      sigma0=float(setup.peers.cma_sigma),
                      min_box=float(setup.evolve.min_box_size))
  chosen = np.asarray(chosen)
  return Choice(chosen, box_masks(sam, embeddings, frame, chosen),
                float(1 + popsize * generations))


def _ascent(sam, scorer, embeddings, frame, images_small, boxes, steps, rng, settings):
  """evolve_prompts for `steps` Adam steps -> (best boxes (B, 4) numpy, their masks)."""
  result = evolve.evolve_prompts(
      sam, scorer, evolve.Batch(embeddings, frame, images_small, jnp.asarray(boxes, jnp.float32)),
      dataclasses.replace(settings, num_steps=int(steps)), rng=rng, masks=False)
  chosen = np.asarray(result.best_prompt)
  return chosen, box_masks(sam, embeddings, frame, chosen)


def sampot(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
           targets=None) -> Choice:
  """SAMPOT (Sathish et al., "Task-driven prompt evolution for foundation models"): Adam on the
  box corners ascending the regressor (evolve.evolve_prompts with config.evolve, without a
  population: the paper's method), the best box on the trajectory by the blended score;
  adam_steps(budget) steps per start."""
  del targets
  starts = setup.evolve.num_starts
  steps = adam_steps(budget, setup.step_cost, starts)
  if steps == 0:
    return initial(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup)
  chosen, masks = _ascent(sam, scorer, embeddings, frame, images_small, boxes, steps, rng,
                          dataclasses.replace(setup.evolve, population=0))
  return Choice(chosen, masks, adam_evals(steps, setup.step_cost, starts))


def hybrid(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
           targets=None) -> Choice:
  """A population, then Adam (evolve's `population`, what refine runs with
  config.evolve.population): budget // 2 boxes, the rough box and the rest moved uniformly by up
  to peers.search_jitter x its size, scored; then Adam steps (one start) from the best of them
  with the rest of the budget; the best box by the blended score over both. When the rest buys
  no Adam step the whole budget goes to the population (the random search)."""
  del targets
  population = int(budget) // 2
  steps = adam_steps(budget - population, setup.step_cost)
  if steps == 0 or population < 2:
    return random_search(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup)
  settings = dataclasses.replace(setup.evolve, num_starts=1, population=population,
                                 population_jitter=setup.peers.search_jitter)
  chosen, masks = _ascent(sam, scorer, embeddings, frame, images_small, boxes, steps, rng,
                          settings)
  return Choice(chosen, masks, population + adam_evals(steps, setup.step_cost))


def true_dice_ascent(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
                     targets=None) -> Choice:
  """The bound of the ascent: SAMPOT's steps at this budget on the true soft Dice with the
  ground truth (baselines.TRUE_DICE, a perfect regressor, no IoU blend), as box_methods."""
  if targets is None:
    raise ValueError("true_dice_ascent is a bound: pass the targets (B, H, W) bool.")
  del scorer
  size = np.shape(images_small)[1:]
  targets_small = jax.image.resize(jnp.asarray(targets, jnp.float32),
                                   (np.shape(targets)[0],) + tuple(size), "linear")
  settings = dataclasses.replace(setup.evolve, iou_weight=0.0, population=0)
  starts = settings.num_starts
  steps = adam_steps(budget, setup.step_cost, starts)
  if steps == 0:
    return initial(sam, None, embeddings, frame, images_small, boxes, budget, rng, setup)
  chosen, masks = _ascent(sam, baselines.TRUE_DICE, embeddings, frame, targets_small, boxes,
                          steps, rng, settings)
  return Choice(chosen, masks, adam_evals(steps, setup.step_cost, starts))


def gt_box(sam, scorer, embeddings, frame, images_small, boxes, budget, rng, setup,
           targets=None) -> Choice:
  """The bound of a box: the ground truth's bounding box, 1 evaluation whatever the budget."""
  del scorer, images_small, boxes, budget, rng, setup
  if targets is None:
    raise ValueError("gt_box is a bound: pass the targets (B, H, W) bool.")
  chosen = prompts_lib.bounding_boxes(np.asarray(targets))
  return Choice(chosen, box_masks(sam, embeddings, frame, chosen), 1.0)


METHODS = {"initial": initial, "multimask": multimask, "sam_u": sam_u, "medsam_u": medsam_u,
           "saif": saif, "random_search": random_search, "cma_es": cma_es, "sampot": sampot,
           "hybrid": hybrid, "true_dice_ascent": true_dice_ascent, "gt_box": gt_box}
BOUNDS = ("true_dice_ascent", "gt_box")  # read the ground truth
FIXED = ("initial", "multimask", "gt_box")  # spend 1 evaluation whatever the budget
# The mask kept is not the kept box's own mask (an average, or another multimask output).
NOT_BOX_MASKS = ("multimask", "sam_u")


# ----------------------------------------------------------------------------
# The cost of an Adam step.


def measure_step_cost(sam: frozen.Sam, scorer: Scorer, embeddings, frame, images_small, boxes,
                      settings: evolve.Settings, chunk: int = 16, probes: int = 8,
                      repeats: int = 3) -> dict:
  """Seconds of a forward evaluation and of a value-and-grad step, each on B x probes boxes
  (the rough boxes repeated) laid out alike, after compilation, the fastest of `repeats`.

  Returns {"forward_seconds", "step_seconds" (per box), "ratio": step / forward,
  "step_cost": max(ratio, 1) (a backward pass is never free)}.
  """
  candidates = np.repeat(np.asarray(boxes, np.float32)[:, None], probes, axis=1)
  n = candidates.shape[0] * probes

  def seconds(grad):
    run = lambda: jax.block_until_ready(candidate_scores(
        sam, scorer, embeddings, frame, images_small, candidates, settings, chunk, grad=grad))
    run()  # compiles
    best = math.inf
    for _ in range(repeats):
      t0 = time.perf_counter()
      run()
      best = min(best, time.perf_counter() - t0)
    return best / n

  forward, step = seconds(False), seconds(True)
  ratio = step / forward
  return {"forward_seconds": forward, "step_seconds": step, "ratio": ratio,
          "step_cost": max(ratio, 1.0), "probes": probes, "repeats": repeats}
