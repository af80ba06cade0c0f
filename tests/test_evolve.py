"""Tests of the SAMPOT loop: controlled ascent, best-by-score, vmap, compilation, NaN, bad input.

Two segmenters: an analytic one (a disk of logits centred on the click, so the
landscape is known) for the optimisation's behaviour, and a tiny random SAM with a
tiny random regressor for the real code path.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampot_jax.regressor import model as regressor
from sampot_jax.regressor import store
from sampot_jax.sam import frozen
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor
from sampot_jax.sampot import evolve
from tests.helpers import (DISK_CONFIG, DISK_FRAME, TARGET, box_decoder,
                           dice_with_image, disk_batch, disk_decoder, disk_mask, disk_sam,
                           soft_dice, target_scorer)

def evolve_disk(start, score_fn=soft_dice, target=TARGET, **settings):
  settings = evolve.Settings(**{"num_steps": 30, "learning_rate": 1.0, **settings})
  return evolve.evolve_prompts(disk_sam(), target_scorer(score_fn, disk_mask(target)),
                               disk_batch([start]), settings)


def test_score_increases_on_a_controlled_case():
  res = evolve_disk((20.0, 28.0))
  scores = np.asarray(res.scores[0, 0])
  assert scores.shape == (31,)
  assert np.isfinite(scores).all()
  # The disks start apart and the ascent brings the click onto the target.
  assert scores[0] < 0.3
  assert float(res.best_score[0]) > 0.9
  assert np.mean(scores[-10:]) > scores[0] + 0.5
  # The first steps climb steadily before Adam's momentum overshoots.
  assert (np.diff(scores[:8]) > 0).all()
  np.testing.assert_allclose(np.asarray(res.best_prompt[0]), TARGET, atol=1.5)
  assert int(res.nan_step[0, 0]) == -1


def test_best_is_the_argmax_of_the_trajectory_not_the_last():
  res = evolve_disk((20.0, 28.0), num_starts=3, restart_jitter=4.0)
  scores = np.asarray(res.scores[0])  # (R, T)
  r, t = np.unravel_index(np.argmax(scores), scores.shape)
  assert (int(res.best_start[0]), int(res.best_step[0])) == (r, t)
  assert float(res.best_score[0]) == scores.max()
  np.testing.assert_array_equal(np.asarray(res.best_prompt[0]), np.asarray(res.prompts[0, r, t]))
  # Adam oscillates around the target here, so the last click is not the best.
  assert scores[r, -1] < scores.max()
  # The given click is start 0, step 0; restarts differ from it.
  np.testing.assert_array_equal(np.asarray(res.initial_prompt[0]), [20.0, 28.0])
  np.testing.assert_array_equal(np.asarray(res.prompts[0, 0, 0]), [20.0, 28.0])
  assert not np.allclose(np.asarray(res.prompts[0, 1, 0]), [20.0, 28.0])
  assert float(res.initial_score[0]) == scores[0, 0]


def test_masks_at_original_size_match_the_clicks():
  res = evolve_disk((20.0, 28.0))
  for name, click in (("initial", res.initial_prompt[0]), ("best", res.best_prompt[0])):
    mask = np.asarray(getattr(res, f"{name}_mask")[0])
    assert mask.shape == (48, 48) and mask.dtype == bool
    # A disk of radius 12 model px = 9 original px around the click.
    yy, xx = np.mgrid[:48, :48] + 0.5
    expected = np.hypot(xx - float(click[0]) - 0.5, yy - float(click[1]) - 0.5) < 9
    assert (mask != expected).mean() < 0.03, name


def test_clicks_stay_inside_the_image():
  # The target disk sits in the corner; a big step drives the click into the border.
  res = evolve_disk((10.0, 10.0), target=(0.0, 0.0), learning_rate=8.0)
  clicks = np.asarray(res.prompts)
  assert clicks.min() >= 0.0 and clicks.max() <= 47.0
  assert clicks.min() == 0.0


def nan_beyond_x(target, image, mask):
  """Soft Dice, but NaN once the mask's centre of mass passes x = 26 px."""
  xs = jnp.arange(mask.shape[-1]) + 0.5
  com_x = (mask * xs).sum((1, 2)) / mask.sum((1, 2))
  return jnp.where(com_x > 26.0, jnp.nan, soft_dice(target, image, mask))


def test_nan_score_stops_that_image_and_is_reported():
  res = evolve_disk((20.0, 28.0), score_fn=nan_beyond_x)
  scores = np.asarray(res.scores[0, 0])
  stop = int(res.nan_step[0, 0])
  assert 0 < stop < len(scores)
  assert np.isfinite(scores[:stop]).all() and np.isnan(scores[stop:]).all()
  # The click froze where the NaN appeared; the best is the best finite one.
  clicks = np.asarray(res.prompts[0, 0])
  np.testing.assert_array_equal(clicks[stop:], np.broadcast_to(clicks[stop], clicks[stop:].shape))
  assert np.isfinite(float(res.best_score[0]))
  assert float(res.best_score[0]) == np.nanmax(scores)
  assert int(res.best_step[0]) < stop
  assert np.isfinite(np.asarray(res.best_prompt)).all()


def test_nan_at_the_first_click_keeps_the_given_click():
  res = evolve_disk((40.0, 28.0), score_fn=nan_beyond_x)
  assert int(res.nan_step[0, 0]) == 0
  assert np.isnan(np.asarray(res.scores)).all()
  np.testing.assert_array_equal(np.asarray(res.best_prompt[0]), [40.0, 28.0])
  assert np.isnan(float(res.best_score[0]))


# ---------------------------------------------------------------------------
# A tiny random SAM and regressor: the real path.

TINY_SAM = dict(img_size=32, embed_dim=16, depth=1, num_heads=1, global_attn_indexes=(0,),
                window_size=2, prompt_embed_dim=16, transformer_mlp_dim=16,
                iou_head_hidden_dim=16, transformer_depth=1, transformer_heads=1,
                iou_head_depth=1)
SETTINGS = evolve.Settings(num_steps=4, num_starts=2, restart_jitter=3.0)


@pytest.fixture(scope="module")
def tiny():
  config = sam_model.sam_config("vit_b", **TINY_SAM)
  params = frozen.random_sam_params(config, seed=1)
  model = regressor.DiceRegressor(features=(4, 4, 4, 4, 4), resolution=16)
  variables = store.random_variables(model, seed=0)
  sam, scorer = frozen.Sam(params, config), store.scorer_of(model, variables)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 24, 24), dtype=np.uint8)
  emb, frame = predictor.encode_images(params, images, config)
  clicks = np.array([[5.0, 6.0], [12.0, 12.0], [20.0, 3.0]], np.float32)
  small = jnp.asarray(images / 255.0, jnp.float32)
  run = lambda emb_, small_, clicks_, rng_=None: evolve.evolve_prompts(
      sam, scorer, evolve.Batch(emb_, frame, small_, clicks_), SETTINGS, rng=rng_)
  return dict(run=run, emb=emb, small=small, clicks=clicks, params=params, config=config,
              frame=frame, variables=variables, sam=sam, scorer=scorer)


def test_vmapped_batch_equals_per_image_runs():
  """Three images in one call vs each alone (the cheap segmenter keeps this fast)."""
  starts = np.array([[20.0, 28.0], [33.0, 22.0], [25.0, 25.0]], np.float32)
  targets = jnp.concatenate([disk_mask(TARGET), disk_mask((28.0, 30.0)), disk_mask((20.0, 20.0))])
  settings = evolve.Settings(num_steps=12, learning_rate=1.0)
  # Each image's "image" is its target disk; the scorer compares the mask with it.
  run = lambda rows: evolve.evolve_prompts(
      disk_sam(), target_scorer(dice_with_image), disk_batch(starts[rows], targets[rows]),
      settings)
  batch = run(np.arange(3))
  for i in range(3):
    alone = run(np.array([i]))
    for name in ("prompts", "scores", "best_prompt", "best_score", "best_mask", "initial_mask",
                 "snapshot_steps", "snapshot_masks", "nan_step"):
      np.testing.assert_allclose(np.asarray(getattr(alone, name)[0]),
                                 np.asarray(getattr(batch, name)[i]), rtol=1e-5, atol=1e-5,
                                 err_msg=f"{name} of image {i}")
  # Different targets, different paths.
  assert not np.allclose(np.asarray(batch.best_prompt[0]), np.asarray(batch.best_prompt[1]))


def test_each_row_of_a_batch_depends_only_on_its_image(tiny):
  """The tiny SAM path: image i in a batch of three copies of itself == row i of the mix."""
  key = jax.random.key(3)
  mixed = tiny["run"](tiny["emb"], tiny["small"], tiny["clicks"], key)
  assert mixed.prompts.shape == (3, 2, 5, 2)
  assert mixed.best_mask.shape == (3, 24, 24) and mixed.best_mask.dtype == jnp.bool_
  for i in range(3):
    rows = np.full(3, i)
    same = tiny["run"](tiny["emb"][rows], tiny["small"][rows], tiny["clicks"][rows], key)
    one = jax.tree.map(lambda x: np.asarray(x[i]), mixed)
    alone = jax.tree.map(lambda x: np.asarray(x[i]), same)
    np.testing.assert_allclose(alone.prompts, one.prompts, atol=1e-4)
    np.testing.assert_allclose(alone.scores, one.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone.best_iou, one.best_iou, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(alone.best_mask, one.best_mask)
    np.testing.assert_array_equal(alone.snapshot_masks, one.snapshot_masks)


def test_image_side_once_per_image_leaves_the_trajectories_unchanged(tiny):
  """evolve_prompts computes SAM's image-side decoder work once per image; any other decode_fn
  (here SAM's own, wrapped) gets none and recomputes it at every step: same paths."""
  plain = lambda *args, **kwargs: predictor.decode_prompts(*args, **kwargs)
  key = jax.random.key(3)
  once = tiny["run"](tiny["emb"], tiny["small"], tiny["clicks"], key)
  every_step = evolve.evolve_prompts(
      dataclasses.replace(tiny["sam"], decode=plain), tiny["scorer"],
      evolve.Batch(tiny["emb"], tiny["frame"], tiny["small"], tiny["clicks"]), SETTINGS, rng=key)
  np.testing.assert_allclose(np.asarray(once.scores), np.asarray(every_step.scores),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(once.prompts), np.asarray(every_step.prompts), atol=1e-3)
  np.testing.assert_array_equal(np.asarray(once.best_mask), np.asarray(every_step.best_mask))


def test_one_compilation_per_batch_shape(tiny):
  tiny["run"](tiny["emb"], tiny["small"], tiny["clicks"])
  before = evolve.compiled_programs()
  # New values, same shapes: no retrace.
  tiny["run"](tiny["emb"][::-1], tiny["small"][::-1], tiny["clicks"][::-1] + 1.0)
  tiny["run"](tiny["emb"] * 0.5, tiny["small"], tiny["clicks"] + 2.0, jax.random.key(7))
  assert evolve.compiled_programs() == before
  # Other static settings are another program (the cheap segmenter keeps this fast).
  evolve_disk((20.0, 28.0), num_steps=3, num_starts=2)
  evolve_disk((21.0, 27.0), num_steps=3, num_starts=2)
  assert evolve.compiled_programs() == before + 1


def test_best_prompt_comes_with_its_mask_and_iou(tiny):
  res = tiny["run"](tiny["emb"], tiny["small"], tiny["clicks"])
  rows = np.arange(3)
  at_best = np.asarray(res.ious)[rows, np.asarray(res.best_start), np.asarray(res.best_step)]
  np.testing.assert_allclose(np.asarray(res.best_iou), at_best, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(res.initial_iou), np.asarray(res.ious[:, 0, 0]),
                             rtol=1e-5, atol=1e-6)
  assert res.best_mask.shape == res.initial_mask.shape == (3, 24, 24)
  assert np.isfinite(np.asarray(res.scores)).all()


def test_bad_input_is_refused(tiny):
  emb, small, clicks = tiny["emb"], tiny["small"], tiny["clicks"]
  with pytest.raises(ValueError, match="outside the 24x24"):
    tiny["run"](emb, small, clicks + np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0]]))
  with pytest.raises(ValueError, match="finite"):
    tiny["run"](emb, small, np.where(np.arange(6).reshape(3, 2) == 3, np.nan, clicks))
  with pytest.raises(ValueError, match=r"expected \(3, D\)"):
    tiny["run"](emb, small, clicks[:2])
  with pytest.raises(ValueError, match="images_small"):
    tiny["run"](emb, small[:2], clicks)
  with pytest.raises(ValueError, match="dtype uint8"):
    tiny["run"](emb, (small * 255).astype(jnp.uint8), clicks)
  with pytest.raises(ValueError, match="num_steps"):
    evolve.Settings(num_steps=-1)
  with pytest.raises(ValueError, match="unknown field"):
    evolve.settings_from_config({"num_step": 3})


def test_mixed_image_sizes_are_refused(tiny):
  images = [np.zeros((24, 24), np.uint8), np.zeros((20, 24), np.uint8)]
  with pytest.raises(ValueError, match="mixes sizes"):
    predictor.encode_images(tiny["params"], images, tiny["config"])


def test_a_box_moves_to_the_box_that_scores_best():
  """Box prompts: the segmenter returns the box itself, the score is soft Dice with a target
  box, so the best box is the target; corners stay ordered and inside the image."""
  target_box = np.array([[12.0, 16.0, 36.0, 30.0]], np.float32)
  low, _ = box_decoder(None, None, jnp.asarray(target_box), DISK_FRAME, DISK_CONFIG)
  target = evolve.soft_mask(low[:, 0], DISK_FRAME, 64, (48, 48), 5.0)
  start = np.array([[6.0, 10.0, 30.0, 38.0]], np.float32)
  settings = evolve.Settings(num_steps=40, learning_rate=1.0, num_starts=3, restart_jitter=2.0)
  res = evolve.evolve_prompts(disk_sam(box_decoder), target_scorer(soft_dice, target),
                              disk_batch(start), settings)
  assert res.prompts.shape == (1, 3, 41, 4)
  np.testing.assert_array_equal(np.asarray(res.initial_prompt), start)
  assert float(res.best_score[0]) > float(res.initial_score[0]) + 0.1
  np.testing.assert_allclose(np.asarray(res.best_prompt[0]), target_box[0], atol=1.5)
  boxes = np.asarray(res.prompts).reshape(-1, 4)
  assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
  assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 47 and boxes[:, [1, 3]].max() <= 47


def test_a_population_first_then_adam_from_its_best():
  """population P: the given box and P - 1 uniform around it (within population_jitter x its
  size, inside the image) are scored; Adam starts at the best of them; the initial prompt and
  score stay the given box's, and the best is no worse than any of the population."""
  target_box = np.array([[12.0, 16.0, 36.0, 30.0]], np.float32)
  low, _ = box_decoder(None, None, jnp.asarray(target_box), DISK_FRAME, DISK_CONFIG)
  target = evolve.soft_mask(low[:, 0], DISK_FRAME, 64, (48, 48), 5.0)
  start = np.array([[6.0, 10.0, 30.0, 38.0], [20.0, 20.0, 44.0, 46.0]], np.float32)
  sam, scorer = disk_sam(box_decoder), target_scorer(soft_dice, target)
  settings = evolve.Settings(num_steps=3, learning_rate=1.0, population=12,
                             population_jitter=0.3)
  batch = disk_batch(start)
  rng = jax.random.key(3)
  res = evolve.evolve_prompts(sam, scorer, batch, settings, rng=rng)
  candidates = np.asarray(evolve.population_prompts(
      jnp.asarray(start), settings, DISK_FRAME.original_size, rng,
      jnp.full((2, 2), 47.0), jnp.ones(2)))
  assert candidates.shape == (2, 12, 4)
  np.testing.assert_array_equal(candidates[:, 0], start)
  size = np.tile(start[:, 2:] - start[:, :2], 2)[:, None]
  assert np.all(np.abs(candidates - start[:, None]) <= 0.3 * size + 1e-4)
  assert candidates.min() >= 0 and candidates.max() <= 47 and len(np.unique(candidates)) > 40
  scored = [[float(scorer(batch.images_small[i:i + 1], evolve.soft_mask(
      box_decoder(None, None, jnp.asarray(c[None]), DISK_FRAME, DISK_CONFIG)[0][:, 0],
      DISK_FRAME, 64, (48, 48), 5.0))[0]) for c in candidates[i]] for i in range(2)]
  for i in range(2):
    np.testing.assert_allclose(np.asarray(res.prompts[i, 0, 0]),
                               candidates[i, int(np.argmax(scored[i]))])
    assert float(res.initial_score[i]) == pytest.approx(scored[i][0], abs=1e-6)
    assert float(res.best_score[i]) >= max(scored[i]) - 1e-6
    assert max(scored[i]) > scored[i][0]  # the population found a better box than the given
  np.testing.assert_array_equal(np.asarray(res.initial_prompt), start)
  # Without a population the first start begins at the given box.
  plain = evolve.evolve_prompts(sam, scorer, batch, dataclasses.replace(settings, population=0),
                                rng=rng)
  np.testing.assert_array_equal(np.asarray(plain.prompts[:, 0, 0]), start)
  np.testing.assert_allclose(np.asarray(plain.initial_score), np.asarray(res.initial_score),
                             atol=1e-6)
  with pytest.raises(ValueError, match="population_jitter"):
    evolve.Settings(population=4, population_jitter=0.0)


def test_iou_objective_ranks_by_sam_iou():
  """objective='iou' ascends the decoder's IoU output: the best prompt is the best IoU's."""
  def iou_decoder(params, embeddings, prompts, frame, config, multimask_output=False):
    logits, _ = disk_decoder(params, embeddings, prompts, frame, config, multimask_output)
    iou = -jnp.sum((prompts - jnp.array([10.0, 40.0])) ** 2, axis=-1, keepdims=True) / 100.0
    return logits, jnp.repeat(iou, logits.shape[1], 1)

  settings = evolve.Settings(num_steps=30, learning_rate=1.0, objective="iou")
  res = evolve.evolve_prompts(disk_sam(iou_decoder), target_scorer(soft_dice, disk_mask(TARGET)),
                              disk_batch([[20.0, 28.0]]), settings)
  # The IoU peak (10, 40), not the score's (the target disk at TARGET).
  np.testing.assert_allclose(np.asarray(res.best_prompt[0]), [10.0, 40.0], atol=1.5)
  assert np.isfinite(np.asarray(res.best_score)).all()  # the regressor's score is still reported


def test_iou_weight_blends_the_regressor_with_sam_iou():
  """iou_weight w scores (1 - w) * regressor + w * IoU: recorded as such, and it moves the
  ascent from the regressor's peak (w = 0) to the IoU head's (w = 1)."""
  def iou_decoder(params, embeddings, prompts, frame, config, multimask_output=False):
    logits, _ = disk_decoder(params, embeddings, prompts, frame, config, multimask_output)
    iou = -jnp.sum((prompts - jnp.array([10.0, 40.0])) ** 2, axis=-1, keepdims=True) / 1000.0
    return logits, jnp.repeat(iou, logits.shape[1], 1)

  def run(steps, w):
    settings = evolve.Settings(num_steps=steps, learning_rate=1.0, iou_weight=w)
    return evolve.evolve_prompts(disk_sam(iou_decoder), target_scorer(soft_dice, disk_mask(TARGET)),
                              disk_batch([[20.0, 28.0]]), settings)
  alone, blended = run(0, 0.0), run(0, 0.25)
  score, iou = float(alone.scores[0, 0, 0]), float(alone.ious[0, 0, 0])
  assert iou != 0 and score != 0
  assert float(blended.scores[0, 0, 0]) == pytest.approx(0.75 * score + 0.25 * iou, rel=1e-6)
  np.testing.assert_allclose(np.asarray(run(40, 0.0).best_prompt[0]), TARGET, atol=1.5)
  np.testing.assert_allclose(np.asarray(run(40, 1.0).best_prompt[0]), [10.0, 40.0], atol=1.5)
  with pytest.raises(ValueError, match="iou_weight"):
    evolve.Settings(iou_weight=1.5)


def test_ascend_blend_false_ascends_the_regressor_and_chooses_by_the_blend():
  """ascend_blend=False: the path is the regressor's own (w = 0), the scores on it and the
  best prompt are the blend's."""
  def iou_decoder(params, embeddings, prompts, frame, config, multimask_output=False):
    logits, _ = disk_decoder(params, embeddings, prompts, frame, config, multimask_output)
    iou = -jnp.sum((prompts - jnp.array([10.0, 40.0])) ** 2, axis=-1, keepdims=True) / 1000.0
    return logits, jnp.repeat(iou, logits.shape[1], 1)

  def run(**settings):
    settings = evolve.Settings(num_steps=30, learning_rate=1.0, **settings)
    return evolve.evolve_prompts(disk_sam(iou_decoder), target_scorer(soft_dice, disk_mask(TARGET)),
                              disk_batch([[20.0, 28.0]]), settings)
  alone = run()
  chosen = run(iou_weight=0.5, ascend_blend=False)
  np.testing.assert_array_equal(np.asarray(chosen.prompts), np.asarray(alone.prompts))
  want = 0.5 * np.asarray(alone.scores[0, 0]) + 0.5 * np.asarray(alone.ious[0, 0])
  np.testing.assert_allclose(np.asarray(chosen.scores[0, 0]), want, rtol=1e-5, atol=1e-6)
  assert int(chosen.best_step[0]) == int(np.argmax(want))
  assert int(chosen.best_step[0]) != int(alone.best_step[0])  # the blend chose another step
  assert not np.allclose(np.asarray(run(iou_weight=0.5).prompts), np.asarray(alone.prompts))
