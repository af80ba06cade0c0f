"""Candidate masks with known Dice."""

import numpy as np
import pytest
from scipy import ndimage

from sampot_jax.regressor import candidates as cands
from sampot_jax.runtime import settings
from sampot_jax.sampot import metrics

from tests.conftest import MONTGOMERY
S = 128


def _ellipse(cy, cx, ry, rx, size=S):
  yy, xx = np.indices((size, size))
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


@pytest.fixture(scope="module")
def lungs():
  """(image, left, right): left lung on the image's right side, as in a radiograph."""
  left = _ellipse(60, 88, 40, 18) & ~_ellipse(95, 70, 18, 12)  # a cardiac notch
  right = _ellipse(58, 40, 42, 20)
  body = _ellipse(64, 64, 62, 56)
  image = np.where(body, 180, 20).astype(np.uint8)
  image[left | right] = 60
  return image, left, right


def test_dice_formula():
  a = np.zeros((20, 20), bool)
  a[0:10, 0:10] = True
  b = np.roll(a, 5, axis=1)
  inter, total = (a & b).sum(), a.sum() + b.sum()
  assert metrics.dice(a, b) == pytest.approx(2 * inter / total)
  assert metrics.dice(a, a) == 1.0
  assert metrics.dice(a, ~a) == 0.0
  assert metrics.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
  with pytest.raises(ValueError, match="shapes"):
    metrics.dice(a, a[:5])


def test_make_candidates_is_deterministic(lungs):
  image, left, right = lungs
  run = lambda seed: cands.make_candidates(image, left, right, np.random.default_rng(seed))
  a, b, c = run(3), run(3), run(4)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.kind == y.kind and x.dice == y.dice
    np.testing.assert_array_equal(x.mask, y.mask)
  assert any(x.dice != y.dice for x, y in zip(a, c))


def test_every_dice_is_the_true_dice(lungs):
  image, left, right = lungs
  out = cands.make_candidates(image, left, right, np.random.default_rng(0))
  config = settings.block(settings.Candidates())
  assert len(out) == config.n_level_sets + config.n_per_kind * len(config.kinds)
  for c in out:
    assert c.mask.shape == left.shape and c.mask.dtype == bool
    inter = np.logical_and(c.mask, left).sum()
    assert c.dice == pytest.approx(2 * inter / (c.mask.sum() + left.sum()))


def test_level_sets_over_and_under_cover_the_range(lungs):
  _, left, _ = lungs
  out = cands.level_set_candidates(left, 20, np.random.default_rng(1))
  assert {c.kind for c in out} == {"level_set"}
  over = [c for c in out if (c.mask >= left).all() and c.mask.sum() > left.sum()]
  under = [c for c in out if (c.mask <= left).all() and c.mask.sum() < left.sum()]
  exact = [c for c in out if (c.mask == left).all()]
  assert len(over) + len(under) + len(exact) == 20
  assert len(over) >= 8 and len(under) >= 8
  d = np.array([c.dice for c in out])
  assert d.min() < 0.3 and d.max() > 0.95
  # Stratified targets: every fifth of [0.2, 1] holds a candidate.
  hist, _ = np.histogram(d, bins=np.linspace(0.2, 1.0, 6))
  assert (hist > 0).all(), hist
  # Level sets of the signed distance: each is {phi <= t}.
  phi = cands.signed_distance(left)
  for c in out:
    t = phi[c.mask].max()
    np.testing.assert_array_equal(c.mask, phi <= t)


@pytest.mark.parametrize("kind", cands.FAILURE_KINDS)
def test_failure_kind_spreads_its_dice(lungs, kind):
  image, left, right = lungs
  out = cands.failure_mode_candidates(image, left, right, 8, np.random.default_rng(2),
                                      kinds=(kind,))
  assert len(out) == 8 and {c.kind for c in out} == {kind}
  d = np.array([c.dice for c in out])
  lo, hi = cands.KIND_DICE_RANGE.get(kind, cands.DICE_RANGE)
  assert d.max() - d.min() > 0.4, d
  assert d.min() < lo + 0.25 and d.max() > hi - 0.15, d
  assert d.max() < 1.0  # a failure mode is never the ground truth itself


def test_failure_kinds_look_like_their_names(lungs):
  image, left, right = lungs
  rng = np.random.default_rng(5)
  by_kind = {}
  for c in cands.failure_mode_candidates(image, left, right, 6, rng):
    by_kind.setdefault(c.kind, []).append(c)
  assert set(by_kind) == set(cands.FAILURE_KINDS)
  for c in by_kind["holes"]:
    assert (c.mask <= left).all()
  for c in by_kind["leak_other_lung"]:
    extra_x = np.nonzero(c.mask & ~left)[1]
    assert extra_x.size and extra_x.max() < np.nonzero(left)[1].mean()  # toward the right lung
    if c.dice < 0.75:
      assert (c.mask & right).any()
  for c in by_kind["leak_outside"]:
    assert not (c.mask & right).any() and (c.mask & ~left).any()
  for c in by_kind["fragments"]:
    assert ndimage.label(c.mask)[1] >= 3
  for c in by_kind["shift"] + by_kind["rotate"]:
    # Rigid moves keep the area, up to pixels pushed off the image and resampling.
    assert c.mask.sum() <= left.sum() * 1.02 + 4


def test_failure_modes_without_other_lung_or_image(lungs):
  _, left, _ = lungs
  out = cands.failure_mode_candidates(None, left, None, 2, np.random.default_rng(0))
  assert len(out) == 2 * len(cands.FAILURE_KINDS)
  leaks = [c for c in out if c.kind == "leak_other_lung"]
  mirror = left[:, ::-1] & ~left
  assert all((c.mask & mirror).any() for c in leaks)


def test_sam_click_prompts_bands_and_ring(lungs):
  _, left, _ = lungs
  prompts = cands.sam_click_prompts(left, np.random.default_rng(0))
  assert prompts.shape == (6, 2) and prompts.dtype == np.float64
  ys, xs = np.nonzero(left)
  edges = np.linspace(ys.min(), ys.max() + 1, 4)
  for i, (x, y) in enumerate(prompts[:3]):
    band = left.copy()
    band[:int(np.ceil(edges[i]))] = False
    band[int(np.ceil(edges[i + 1])):] = False
    by, bx = np.nonzero(band)
    assert edges[i] <= y < edges[i + 1]
    assert (x, y) == pytest.approx((bx.mean(), by.mean()))
  dist = ndimage.distance_transform_edt(~left)
  for x, y in prompts[3:]:
    assert x == int(x) and y == int(y)
    assert not left[int(y), int(x)]
    assert 5 <= dist[int(y), int(x)] < 6
  assert len({tuple(p) for p in prompts[3:]}) == 3
  other = cands.sam_click_prompts(left, np.random.default_rng(1))
  np.testing.assert_array_equal(other[:3], prompts[:3])
  assert not np.array_equal(other[3:], prompts[3:])


def test_sam_click_candidates_with_a_fake_model(lungs):
  _, left, _ = lungs
  clicks = []

  def segment_fn(click):
    clicks.append(click)
    return _ellipse(click[1], click[0], 25, 15)

  out = cands.sam_click_candidates(left, segment_fn, np.random.default_rng(0))
  assert len(out) == 6 and {c.kind for c in out} == {"sam_click"}
  np.testing.assert_array_equal(np.array(clicks),
                                cands.sam_click_prompts(left, np.random.default_rng(0)))
  for c, click in zip(out, clicks):
    assert c.dice == pytest.approx(metrics.dice(_ellipse(click[1], click[0], 25, 15), left))
  with pytest.raises(ValueError, match="shape"):
    cands.sam_click_candidates(left, lambda c: np.zeros((8, 8), bool), np.random.default_rng(0))
  with_sam = cands.make_candidates(None, left, None, np.random.default_rng(0),
                                   segment_fn=segment_fn)
  assert sum(c.kind == "sam_click" for c in with_sam) == 6


def test_bad_arguments(lungs):
  _, left, right = lungs
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="empty"):
    cands.level_set_candidates(np.zeros_like(left), 4, rng)
  with pytest.raises(ValueError, match="unknown failure kind"):
    cands.failure_mode_candidates(None, left, right, 1, rng, kinds=("melt",))
  with pytest.raises(ValueError, match="other_lung"):
    cands.failure_mode_candidates(None, left, right[:64], 1, rng)


@pytest.mark.needs_data
def test_real_lung_spreads():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  sid = "MCUCXR_0001_0"
  read = lambda sub: np.array(Image.open(MONTGOMERY / sub / f"{sid}.png"))
  down = lambda m: m.reshape(256, 2, 256, 2).mean(axis=(1, 3))
  image = down(read("images")).astype(np.uint8)
  left, right = down(read("masks/left") > 0) > 0.5, down(read("masks/right") > 0) > 0.5
  out = cands.make_candidates(image, left, right, np.random.default_rng(0))
  for kind in ("level_set",) + cands.FAILURE_KINDS:
    d = [c.dice for c in out if c.kind == kind]
    assert max(d) - min(d) > 0.3, (kind, d)


def test_a_few_label_draw_takes_other_train_images_and_keys_its_cache(lungs):
  """config.train_images_draw = k picks N train subjects at random (seed k, in id order), with
  their own masks; 0 keeps the first N and the cache key of runs made before the setting."""
  from configs import regressor_paper_tiny  # pylint: disable=g-import-not-at-top
  from sampot_jax.data.lungs import LungSet  # pylint: disable=g-import-not-at-top
  from sampot_jax.regressor import candidate_sets  # pylint: disable=g-import-not-at-top
  image, left, right = lungs
  n = 12
  shifts = [np.roll(m, 3 * i, axis=1) for i, m in enumerate([left] * n)]
  subjects = LungSet([f"s{i:02d}" for i in range(n)], np.stack([image] * n), np.stack(shifts),
                     np.stack([right] * n))
  config = regressor_paper_tiny.get_config()
  config.max_images_per_split, config.train_images = 0, 4
  first = candidate_sets.build_candidate_set(subjects, config, "train", "synthetic")
  assert list(first.ids) == ["s00", "s01", "s02", "s03"]
  key_first = candidate_sets.cache_key(config, "train")
  config.train_images_draw = 3
  drawn = candidate_sets.build_candidate_set(subjects, config, "train", "synthetic")
  rows = [int(i[1:]) for i in drawn.ids]
  assert len(rows) == 4 and rows == sorted(set(rows)) and rows != [0, 1, 2, 3]
  np.testing.assert_array_equal(drawn.targets, np.stack(shifts)[rows])  # each its own mask
  again = candidate_sets.build_candidate_set(subjects, config, "train", "synthetic")
  assert list(again.ids) == list(drawn.ids)
  assert candidate_sets.cache_key(config, "train") != key_first
  plain = regressor_paper_tiny.get_config()
  plain.max_images_per_split = 0
  assert candidate_sets.cache_key(config, "test") == candidate_sets.cache_key(plain, "test")
  del config["train_images_draw"]  # a config from before the setting: the same cache as 0
  assert candidate_sets.cache_key(config, "train") == key_first
