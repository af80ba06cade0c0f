"""Candidate masks with known Dice: the regressor's training and test data.

Three families, all deterministic given a `np.random.Generator`:

- `level_set_candidates`: level sets of the ground truth's signed distance map,
  over- and under-segmented (paper Fig. 3).
- `sam_click_candidates`: SAM's masks for 6 single-click prompts per image
  (`sam_click_prompts`; the paper, section 3.2); the model comes in as `segment_fn`.
- `failure_mode_candidates`: what a wandering click produces (the paper's Fig. 6,
  masks that leave the lung): FAILURE_KINDS.

Failure-mode candidates aim at Dice values drawn stratified-uniformly over a range
(`DICE_RANGE`, per kind), each kind moving one severity parameter p in [0, 1] along
which Dice falls, bisected to the drawn target. So every kind spreads over its range
by construction instead of clustering where a fixed parameter range happens to land.

All masks are (S, S) bool on the ground truth's grid; clicks are (x, y) floats in
that grid's pixels (x = column, y = row).
"""
import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage

from sampot_jax import errors
from sampot_jax.runtime import settings
from sampot_jax.sampot import metrics

FAILURE_KINDS = settings.FAILURE_KINDS
DICE_RANGE = (0.2, 0.98)
# Holes remove area only, so Dice = 2(1-h)/(2-h); below ~0.3 nothing recognisable is left.
KIND_DICE_RANGE = {"holes": (0.3, 0.98)}


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A candidate mask and its true Dice against the target mask."""
  mask: np.ndarray  # (S, S) bool
  dice: float
  kind: str
  model_iou: float = float("nan")  # the model's own IoU prediction, for model-made masks


def signed_distance(mask: np.ndarray) -> np.ndarray:
  """Euclidean signed distance: > 0 outside, < 0 inside, in pixels. (S,S) bool -> float32.

  Inside pixels are <= -1 and outside pixels >= 1, so `phi <= 0` is the mask itself.
  """
  mask = np.asarray(mask, bool)
  return (ndimage.distance_transform_edt(~mask)
          - ndimage.distance_transform_edt(mask)).astype(np.float32)


def _check_gt(gt: np.ndarray) -> np.ndarray:
  gt = np.asarray(gt)
  if gt.ndim != 2:
    raise ValueError(f"gt has shape {gt.shape}; expected one (S, S) mask.")
  gt = gt.astype(bool)
  if not gt.any():
    raise ValueError("gt is an empty mask; candidates need a target with foreground.")
  return gt


def _targets(n: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
  """n Dice targets, one per stratum of [lo, hi], in random order."""
  strata = (rng.permutation(n) + rng.uniform(size=n)) / max(n, 1)
  return lo + (hi - lo) * strata


def level_set_candidates(gt: np.ndarray, n: int, rng: np.random.Generator,
                         dice_range=(0.2, 1.0)) -> list[Candidate]:
  """Level sets {phi <= t} of the signed distance phi of `gt` (paper Fig. 3).

  Half the candidates are over-segmented (t > 0), half under-segmented (t < 0);
  each aims at a Dice target drawn stratified over `dice_range` and takes the level
  whose Dice is closest on its side (a side that cannot reach a target gives its
  extreme level).

  Args:
    gt: (S, S) bool target mask.
    n: number of candidates.
    rng: numpy Generator.
    dice_range: (lo, hi) Dice the targets cover.

  Returns:
    n Candidates of kind 'level_set'.
  """
  gt = _check_gt(gt)
  phi = signed_distance(gt)
  levels, inverse = np.unique(phi, return_inverse=True)
  size = np.cumsum(np.bincount(inverse.ravel()))
  inter = np.cumsum(np.bincount(inverse.ravel(), weights=gt.ravel()))
  curve = 2.0 * inter / (size + gt.sum())  # Dice of {phi <= levels[i]}
  under = np.nonzero(levels < 0)[0]
  over = np.nonzero(levels > 0)[0]
  targets = _targets(n, rng, *dice_range)
  first_side = rng.integers(2)
  out = []
  for i, target in enumerate(targets):
    side = over if (i + first_side) % 2 else under
    idx = side[np.argmin(np.abs(curve[side] - target))]
    mask = phi <= levels[idx]
    out.append(Candidate(mask, metrics.dice(mask, gt), "level_set"))
  return out


def sam_click_prompts(gt: np.ndarray, rng: np.random.Generator, offset: float = 5.0,
                      n_bands: int = 3, n_outside: int = 3) -> np.ndarray:
  """The paper's 6 single-click prompts for one lung (section 3.2).

  The lung field's rows [ymin, ymax] are cut into `n_bands` equal horizontal bands;
  the first prompts are the centroids of the lung pixels in each band (a centroid
  may fall just outside a concave lung, as in the paper). "Random points outside the
  bands with an offset of 5 pixels" are read as: the bands cover the whole lung, so
  outside them is outside the lung field, and the points are drawn uniformly from the
  pixels `offset` to `offset` + 1 pixels away from it (a ring hugging the lung, where
  a slightly misplaced click lands).

  Args:
    gt: (S, S) bool lung mask.
    rng: numpy Generator.
    offset: distance of the outside points from the lung, in gt pixels.

  Returns:
    (n_bands + n_outside, 2) float64 (x, y): band centroids top to bottom, then the
    outside points.
  """
  gt = _check_gt(gt)
  ys, xs = np.nonzero(gt)
  edges = np.linspace(ys.min(), ys.max() + 1, n_bands + 1)
  points = []
  for top, bottom in zip(edges[:-1], edges[1:]):
    sel = (ys >= top) & (ys < bottom)
    points.append((xs[sel].mean(), ys[sel].mean()))
  dist = ndimage.distance_transform_edt(~gt)
  ring_y, ring_x = np.nonzero((dist >= offset) & (dist < offset + 1))
  if ring_y.size < n_outside:
    raise ValueError(f"only {ring_y.size} pixels lie {offset} px outside the lung; the "
                     "mask fills the image. Use a smaller offset.")
  pick = rng.choice(ring_y.size, size=n_outside, replace=False)
  points.extend(zip(ring_x[pick], ring_y[pick]))
  return np.asarray(points, np.float64)


def sam_click_candidates(gt: np.ndarray, segment_fn: Callable[[np.ndarray], np.ndarray],
                         rng: np.random.Generator, **prompt_kwargs) -> list[Candidate]:
  """SAM's masks for the 6 `sam_click_prompts`.

  Args:
    gt: (S, S) bool target mask.
    segment_fn: click (2,) float (x, y) in gt pixels -> (S, S) mask (bool or 0/1);
      e.g. the Flax SAM predicting on this image, resized to S.
    rng: numpy Generator.

  Returns:
    6 Candidates of kind 'sam_click'.
  """
  gt = _check_gt(gt)
  out = []
  for click in sam_click_prompts(gt, rng, **prompt_kwargs):
    mask = np.asarray(segment_fn(click))
    if mask.shape != gt.shape:
      raise ValueError(f"segment_fn returned a mask of shape {mask.shape} for click "
                       f"{click.tolist()}; expected gt's shape {gt.shape}.")
    mask = mask.astype(bool)
    out.append(Candidate(mask, metrics.dice(mask, gt), "sam_click"))
  return out


def model_box_candidates(gt: np.ndarray, segment_boxes: Callable, rng: np.random.Generator,
                         n: int, max_jitter: float) -> list[Candidate]:
  """A box-prompted model's own masks for `n` rough boxes around the target (kind 'model_box').

  The boxes are prompts.rough_boxes of the target's bounding box with jitter ~ U(0,
  max_jitter) each: from a tight box to a careless one, the masks SAMPOT ranks.

  Args:
    gt: (S, S) bool target mask.
    segment_boxes: boxes (n, 4) (x0, y0, x1, y1) in gt pixels -> (masks (n, S, S), model
      IoU predictions (n,)), e.g. LiteMedSAM on this image.
    rng: numpy Generator; n: number of boxes; max_jitter: the largest jitter.
  """
  from sampot_jax.sampot import prompts  # pylint: disable=g-import-not-at-top
  gt = _check_gt(gt)
  jitter = rng.uniform(0.0, max_jitter, n)
  boxes = prompts.rough_boxes(np.repeat(prompts.bounding_boxes(gt)[None], n, 0), jitter, rng,
                              gt.shape)
  masks, ious = segment_boxes(boxes)
  masks, ious = np.asarray(masks, bool), np.asarray(ious, np.float64)
  if masks.shape != (n,) + gt.shape:
    raise ValueError(f"segment_boxes returned masks of shape {masks.shape}; expected "
                     f"{(n,) + gt.shape}.")
  return [Candidate(m, metrics.dice(m, gt), "model_box", float(iou)) for m, iou in zip(masks, ious)]


# Failure modes. Each `_make_<kind>` draws its random aspects once and returns
# make(p) -> (S, S) bool, whose Dice against gt falls (roughly monotonically) as the
# severity p goes from 0 to 1.


@dataclasses.dataclass
class _Context:
  gt: np.ndarray
  other: np.ndarray       # the other lung (or its stand-in)
  image: np.ndarray | None
  phi: np.ndarray         # signed distance of gt
  centroid: np.ndarray    # (y, x)
  extent: float           # gt bounding-box diagonal, pixels
  zone: np.ndarray        # other lung + mediastinum between the lungs

  @property
  def size(self) -> int:
    return self.gt.shape[0]


def _context(image, gt, other_lung) -> _Context:
  if other_lung is None:
    # No other-lung mask (a single-target data set): the mirror image of the target
    # about the vertical midline stands in for it.
    other = gt[:, ::-1].copy() & ~gt
  else:
    other = np.asarray(other_lung, bool)
    if other.shape != gt.shape:
      raise ValueError(f"other_lung has shape {other.shape}; expected gt's {gt.shape}.")
    other = other & ~gt
  if image is not None:
    image = np.asarray(image)
    if image.shape != gt.shape:
      raise ValueError(f"image has shape {image.shape}; expected gt's {gt.shape}.")
  ys, xs = np.nonzero(gt)
  extent = float(np.hypot(np.ptp(ys) + 1, np.ptp(xs) + 1))
  zone = other.copy()
  if other.any():
    # Mediastinum: in rows holding both lungs, the pixels between them.
    cols = np.arange(gt.shape[1])
    gt_left_of_other = xs.mean() < np.nonzero(other)[1].mean()
    for row in np.nonzero(gt.any(axis=1) & other.any(axis=1))[0]:
      g, o = cols[gt[row]], cols[other[row]]
      lo, hi = (g.max(), o.min()) if gt_left_of_other else (o.max(), g.min())
      if hi > lo + 1:
        zone[row, lo + 1:hi] = True
    zone &= ~gt
  return _Context(gt, other, image, signed_distance(gt), np.array([ys.mean(), xs.mean()]),
                  extent, zone)


def _smooth_noise(shape, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """Gaussian-smoothed white noise scaled to unit std. -> shape float32."""
  field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma,
                                  mode="wrap")
  return (field - field.mean()) / (field.std() + 1e-12)


def _first(order: np.ndarray, count: float, shape) -> np.ndarray:
  """Mask of the first `count` flat indices of `order`."""
  out = np.zeros(int(np.prod(shape)), bool)
  out[order[:int(round(count))]] = True
  return out.reshape(shape)


def _affine(mask: np.ndarray, matrix: np.ndarray, center: np.ndarray,
            pivot_out: np.ndarray | None = None) -> np.ndarray:
  """Nearest-neighbour warp: output point q samples input matrix @ (q - pivot_out) + center."""
  pivot_out = center if pivot_out is None else pivot_out
  offset = center - matrix @ pivot_out
  return ndimage.affine_transform(mask.astype(np.uint8), matrix, offset=offset, order=0,
                                  mode="constant", cval=0).astype(bool)


def _make_shift(ctx: _Context, rng):
  angle = rng.uniform(0, 2 * np.pi)
  direction = np.array([np.sin(angle), np.cos(angle)])

  def make(p):
    dy, dx = np.rint(p * ctx.extent * direction).astype(int)
    out = np.zeros_like(ctx.gt)
    h, w = ctx.gt.shape
    src = ctx.gt[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out
  return make


def _make_scale(ctx: _Context, rng):
  grow = rng.uniform() < 0.5
  aspect = rng.uniform(-0.25, 0.25)  # anisotropy: y and x scale differently

  def make(p):
    s = 1 + 3 * p if grow else 1 - 0.97 * p
    sy, sx = s ** (1 + aspect), s ** (1 - aspect)
    return _affine(ctx.gt, np.diag([1 / sy, 1 / sx]), ctx.centroid)
  return make


def _make_rotate(ctx: _Context, rng):
  sign = rng.choice([-1.0, 1.0])
  pivot = ctx.centroid + rng.normal(0, 0.15 * ctx.extent, size=2)

  def make(p):
    t = sign * p * np.pi
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return _affine(ctx.gt, rot, pivot)
  return make


def _make_holes(ctx: _Context, rng):
  field = _smooth_noise(ctx.gt.shape, rng.uniform(ctx.size / 40, ctx.size / 12), rng)
  inside = np.flatnonzero(ctx.gt)
  order = inside[np.argsort(field.ravel()[inside], kind="stable")]

  def make(p):
    # Removing a fraction h of the lung gives Dice 2(1-h)/(2-h); p = h.
    return ctx.gt & ~_first(order, p * order.size, ctx.gt.shape)
  return make


def _make_ragged(ctx: _Context, rng):
  field = _smooth_noise(ctx.gt.shape, rng.uniform(ctx.size / 128, ctx.size / 40), rng)
  # Ragged and, as severity grows, also over- or under-segmented.
  bias = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0)

  def make(p):
    amp = p * ctx.extent / 8 + 1e-6
    # The noise fades away from the boundary, so it roughens the edge rather than
    # sprinkling specks over the image.
    fade = np.exp(-np.square(ctx.phi / (2 * amp)))
    return ctx.phi + amp * field * fade + p * bias * ctx.extent / 3 <= 0
  return make


def _make_leak_other_lung(ctx: _Context, rng):
  del rng  # the path is fixed by the anatomy
  zone = np.flatnonzero(ctx.zone)
  dist_gt = ndimage.distance_transform_edt(~ctx.gt).ravel()
  zone_order = zone[np.argsort(dist_gt[zone], kind="stable")]
  inside = np.flatnonzero(ctx.gt)
  if ctx.other.any():
    dist_other = ndimage.distance_transform_edt(~ctx.other).ravel()
  else:
    dist_other = np.zeros(ctx.gt.size)
  # The part of the lung farthest from the other lung goes first.
  gt_order = inside[np.argsort(-dist_other[inside], kind="stable")]

  def make(p):
    # p in [0, 1/2]: spread across the mediastinum into the other lung;
    # p in (1/2, 1]: all of it, while the target lung slips away.
    leak = _first(zone_order, min(2 * p, 1.0) * zone_order.size, ctx.gt.shape)
    lost = _first(gt_order, max(2 * p - 1, 0.0) * gt_order.size, ctx.gt.shape)
    return (ctx.gt & ~lost) | leak
  return make


def _make_leak_outside(ctx: _Context, rng):
  gt = ctx.gt
  boundary = gt & ~ndimage.binary_erosion(gt)
  near_zone = ndimage.distance_transform_edt(~ctx.zone) < 0.1 * ctx.extent if ctx.zone.any() \
      else np.zeros_like(gt)
  seeds = np.argwhere(boundary & ~near_zone)
  if not seeds.size:
    seeds = np.argwhere(boundary)
  seed = seeds[rng.integers(len(seeds))]
  yy, xx = np.indices(gt.shape)
  cost = np.hypot(yy - seed[0], xx - seed[1])
  if ctx.image is not None:
    # Leaks follow lung-like (dark) intensity, as SAM's do.
    weight = rng.uniform(0, 0.5) * ctx.size
    smooth = ndimage.gaussian_filter(ctx.image.astype(np.float32), 2)
    cost = cost + weight * np.abs(smooth - np.median(smooth[gt])) / 255.0
  outside = np.flatnonzero(~gt & ~ctx.zone)
  leak_order = outside[np.argsort(cost.ravel()[outside], kind="stable")]
  max_leak = min(2.0 * gt.sum(), leak_order.size)
  inside = np.flatnonzero(gt)
  gt_order = inside[np.argsort(-cost.ravel()[inside], kind="stable")]

  def make(p):
    # p in [0, 1/2]: a blob grows out of the lung at `seed` (up to twice the lung's
    # area); p in (1/2, 1]: the lung is lost from its far side, the blob stays.
    leak = _first(leak_order, min(2 * p, 1.0) * max_leak, gt.shape)
    lost = _first(gt_order, max(2 * p - 1, 0.0) * gt_order.size, gt.shape)
    return (gt & ~lost) | leak
  return make


def _make_fragments(ctx: _Context, rng):
  cracks = np.abs(_smooth_noise(ctx.gt.shape, rng.uniform(ctx.size / 30, ctx.size / 15), rng))
  islands = _smooth_noise(ctx.gt.shape, rng.uniform(ctx.size / 80, ctx.size / 30), rng)
  outside = np.flatnonzero(~ctx.gt)
  island_order = outside[np.argsort(-islands.ravel()[outside], kind="stable")]
  area = ctx.gt.sum()

  def make(p):
    # Cracks |n| < w split the lung into pieces; islands of the same total scale
    # appear elsewhere in the image.
    kept = ctx.gt & (cracks >= 1.6 * p)
    return kept | _first(island_order, 1.5 * p * area, ctx.gt.shape)
  return make


_MAKERS = {
    "shift": _make_shift, "scale": _make_scale, "rotate": _make_rotate,
    "holes": _make_holes, "ragged": _make_ragged, "leak_other_lung": _make_leak_other_lung,
    "leak_outside": _make_leak_outside, "fragments": _make_fragments,
}
assert set(_MAKERS) == set(FAILURE_KINDS)


def _bisect(make, gt, target: float, iters: int) -> tuple[np.ndarray, float]:
  """The make(p), p in [0, 1], whose Dice is nearest `target` (Dice falling in p)."""
  lo, hi = 0.0, 1.0
  best_mask, best_dice = None, None
  for _ in range(iters):
    p = 0.5 * (lo + hi)
    mask = make(p)
    d = metrics.dice(mask, gt)
    if best_dice is None or abs(d - target) < abs(best_dice - target):
      best_mask, best_dice = mask, d
    if d > target:
      lo = p
    else:
      hi = p
  return best_mask, best_dice


def failure_mode_candidates(image: np.ndarray | None, gt: np.ndarray,
                            other_lung: np.ndarray | None, n_per_kind: int,
                            rng: np.random.Generator, kinds=FAILURE_KINDS,
                            iters: int = 10) -> list[Candidate]:
  """Masks that leave or break the lung, `n_per_kind` of each kind in `kinds`.

  Args:
    image: (S, S) uint8 radiograph, or None; leak_outside prefers lung-like intensity.
    gt: (S, S) bool target mask.
    other_lung: (S, S) bool, the other lung (leakage target), or None to use the
      mirror image of gt about the vertical midline.
    n_per_kind: candidates per kind.
    rng: numpy Generator.
    kinds: subset of FAILURE_KINDS.
    iters: bisection steps on the severity per candidate.

  Returns:
    Candidates grouped by kind, in `kinds` order.
  """
  gt = _check_gt(gt)
  unknown = set(kinds) - set(FAILURE_KINDS)
  if unknown:
    raise errors.ConfigError(f"unknown failure kind(s) {sorted(unknown)}; choose from {FAILURE_KINDS}.")
  ctx = _context(image, gt, other_lung)
  out = []
  for kind in kinds:
    lo, hi = KIND_DICE_RANGE.get(kind, DICE_RANGE)
    for target in _targets(n_per_kind, rng, lo, hi):
      make = _MAKERS[kind](ctx, rng)
      mask, d = _bisect(make, gt, target, iters)
      out.append(Candidate(mask, d, kind))
  return out


def make_candidates(image: np.ndarray | None, gt: np.ndarray, other_lung: np.ndarray | None,
                    rng: np.random.Generator, config=None,
                    segment_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                    segment_boxes: Callable | None = None) -> list[Candidate]:
  """All candidates for one image: level sets, failure modes, SAM clicks if segment_fn.

  Args:
    image: (S, S) uint8 or None.
    gt: (S, S) bool target mask.
    other_lung: (S, S) bool or None.
    rng: numpy Generator.
    config: config.candidates (runtime.settings.Candidates; None: its defaults).
    segment_fn: optional click (x, y) -> (S, S) mask; adds 6 'sam_click' candidates.
    segment_boxes: optional boxes (n, 4) -> (masks, model IoUs); adds config.model_boxes
      'model_box' candidates (rough boxes up to config.model_box_max_jitter).

  Returns:
    list of Candidate.
  """
  config = settings.typed(settings.Candidates, config, "config.candidates")
  out = level_set_candidates(gt, config.n_level_sets, rng, tuple(config.level_set_dice_range))
  if config.n_per_kind and config.kinds:
    out += failure_mode_candidates(image, gt, other_lung, config.n_per_kind, rng,
                                   tuple(config.kinds))
  if segment_fn is not None:
    out += sam_click_candidates(gt, segment_fn, rng)
  if segment_boxes is not None and config.model_boxes:
    out += model_box_candidates(gt, segment_boxes, rng, int(config.model_boxes),
                                float(config.model_box_max_jitter))
  return out
