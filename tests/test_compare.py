"""The compare task: SAMPOT and its peers at matched budgets (sampot/peers.py, tasks/compare.py).

The peers on an analytic segmenter whose mask is the box itself (helpers.box_decoder) and a
score that is the soft Dice with a known target box, so the right answer is known; the budget
accounting; the tiny config end to end on three Montgomery X-rays.
"""
import csv
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sampot_jax import errors
from sampot_jax.sampot import evolve
from sampot_jax.sampot import metrics
from sampot_jax.sampot import peers
from sampot_jax.sampot import prompts
from tests import helpers
from tests.helpers import (DISK_CONFIG, DISK_FRAME, box_decoder, disk_batch, disk_sam, soft_dice,
                           target_scorer)

TARGET_BOX = np.array([[12.0, 16.0, 36.0, 30.0]], np.float32)
START = np.array([[6.0, 10.0, 30.0, 38.0]], np.float32)  # a rough box around it


def target_soft(box=TARGET_BOX, slope=5.0):
  low, _ = box_decoder(None, None, jnp.asarray(box), DISK_FRAME, DISK_CONFIG)
  return evolve.soft_mask(low[:, 0], DISK_FRAME, 64, (48, 48), slope)


SAM = disk_sam(box_decoder)
SCORER = target_scorer(soft_dice, target_soft())
FROZEN_CONFIG = ml_collections.FrozenConfigDict(DISK_CONFIG)


@functools.cache
def target_mask():
  """(1, 48, 48) bool: the segmenter's mask of the target box (the ground truth here)."""
  return np.asarray(peers.box_masks(SAM, jnp.zeros((1, 1, 1, 1)), DISK_FRAME, TARGET_BOX))


def setup(step_cost=1.0, **peer_settings):
  return peers.Setup(evolve.Settings(learning_rate=1.0), step_cost,
                     peers.Settings(**peer_settings))


def call(method, budget, boxes=START, step_cost=1.0, seed=0, rng=None, **peer_settings):
  batch = disk_batch(boxes)
  return peers.METHODS[method](SAM, SCORER, batch.embeddings, DISK_FRAME, batch.images_small,
                               batch.prompts, budget,
                               jax.random.key(seed) if rng is None else rng,
                               setup(step_cost, **peer_settings),
                               targets=np.repeat(target_mask(), len(boxes), 0))


def score(boxes):
  batch = disk_batch(boxes)
  return np.asarray(peers.candidate_scores(SAM, SCORER, batch.embeddings, DISK_FRAME,
                                           batch.images_small, np.asarray(boxes)[:, None],
                                           evolve.Settings()))[:, 0]


def dice(masks):
  return metrics.dice(np.asarray(masks)[0], target_mask()[0])


# ---------------------------------------------------------------------------
# Budget accounting.


def test_adam_steps_fit_the_budget():
  # An Adam step at 3 evaluations: evolve's n steps are n + 1 forward-backward passes.
  assert [peers.adam_steps(b, 3.0) for b in (1, 5, 6, 8, 16, 32, 64)] == [0, 0, 1, 1, 4, 9, 20]
  assert peers.adam_evals(0, 3.0) == 1.0 and peers.adam_evals(4, 3.0) == 15.0
  assert peers.adam_steps(64, 2.0, starts=4) == 7 and peers.adam_evals(7, 2.0, 4) == 64.0
  for cost in (1.0, 1.7, 2.5, 3.0, 4.41, 7.9):
    for budget in range(1, 130):
      steps = peers.adam_steps(budget, cost)
      assert peers.adam_evals(steps, cost) <= budget
      # One more step would not fit.
      assert (steps + 2) * cost > budget


def test_cma_schedule_fits_the_budget():
  assert peers.cma_schedule(1, 8) == (0, 0) and peers.cma_schedule(2, 8) == (0, 0)
  assert peers.cma_schedule(3, 8) == (2, 1)
  assert peers.cma_schedule(8, 8) == (3, 2) and peers.cma_schedule(64, 8) == (9, 7)
  for budget in range(1, 200):
    population, generations = peers.cma_schedule(budget, 8)
    assert 1 + population * generations <= budget
    if generations:
      assert population >= 2
    if budget >= 9:  # at most a population's worth left over
      assert budget - 1 - population * generations < population + generations


# ---------------------------------------------------------------------------
# The peers on the analytic segmenter.


def test_every_method_spends_at_most_its_budget_and_keeps_valid_boxes():
  for method in peers.METHODS:
    for budget in (1, 3, 8):
      choice = call(method, budget, np.concatenate([START, TARGET_BOX]), step_cost=2.0)
      assert 1 <= choice.evals <= budget, (method, budget)
      boxes = np.asarray(choice.boxes)
      assert boxes.shape == (2, 4) and np.asarray(choice.masks).shape == (2, 48, 48)
      assert np.all(boxes[:, 2:] > boxes[:, :2]) and boxes.min() >= 0 and boxes.max() <= 47


def test_sam_u_average_of_identical_boxes_is_that_boxs_mask():
  batch = disk_batch(START)
  same = np.repeat(START[:, None], 5, axis=1)
  mean = peers._mean_probability(  # pylint: disable=protected-access
      SAM.params, batch.embeddings, jnp.asarray(same), sam_config=FROZEN_CONFIG,
      frame=DISK_FRAME, decode_fn=box_decoder)
  expected = np.asarray(peers.box_masks(SAM, batch.embeddings, DISK_FRAME, START))
  np.testing.assert_array_equal(np.asarray(mean) > 0.5, expected)
  # Budget 1: the rough box alone.
  choice = call("sam_u", 1)
  np.testing.assert_array_equal(np.asarray(choice.masks), expected)
  np.testing.assert_array_equal(choice.boxes, START)


def test_sam_u_averages_the_jittered_boxes():
  """Three boxes: the mask is where the mean of their probabilities sigmoid(logits at the
  original size) exceeds 0.5 (not where the mean logit is positive), between their
  intersection and their union."""
  from sampot_jax.sam import processing  # pylint: disable=g-import-not-at-top
  shift = np.array([[6.0, 0.0, 6.0, 0.0]], np.float32)
  boxes = [TARGET_BOX, TARGET_BOX + shift, TARGET_BOX - 0.5 * shift]
  batch = disk_batch(TARGET_BOX)
  mean = peers._mean_probability(  # pylint: disable=protected-access
      SAM.params, batch.embeddings, jnp.asarray(np.stack(boxes, axis=1)),
      sam_config=FROZEN_CONFIG, frame=DISK_FRAME, decode_fn=box_decoder)
  logits = np.stack([np.asarray(processing.processing_for(DISK_CONFIG).postprocess_masks(
      box_decoder(None, None, jnp.asarray(box), DISK_FRAME, DISK_CONFIG)[0],
      DISK_FRAME.input_size, DISK_FRAME.original_size, 64))[0, 0] for box in boxes])
  expected = (1 / (1 + np.exp(-logits.astype(np.float64)))).mean(0) > 0.5
  assert (expected != (logits.mean(0) > 0)).any()  # the two averages differ here
  sam_u_mask = np.asarray(mean)[0] > 0.5
  np.testing.assert_array_equal(sam_u_mask, expected)
  masks = np.stack([np.asarray(peers.box_masks(SAM, batch.embeddings, DISK_FRAME, box))[0]
                    for box in boxes])
  assert np.all(sam_u_mask >= masks.all(0)) and np.all(sam_u_mask <= masks.any(0))


def test_cma_es_improves_a_smooth_known_objective():
  optimum = jnp.array([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.0, 2.0, -0.5]])
  objective = lambda x: -jnp.sum((x - optimum[:, None]) ** 2, axis=-1)  # (B, P, 4) -> (B, P)
  x0 = jnp.zeros((2, 4))
  best_x, best_f = jax.jit(lambda key: peers.cma_es_maximize(objective, x0, 0.5, 8, 60, key))(
      jax.random.key(0))
  assert np.all(np.asarray(best_f) > -1e-3), best_f  # from -14.25 and -5.25
  np.testing.assert_allclose(np.asarray(best_x), np.asarray(optimum), atol=0.03)
  # The best is the best point evaluated: never worse than the start, even with no generation.
  start_x, start_f = peers.cma_es_maximize(objective, x0, 0.5, 8, 0, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(start_x), np.asarray(x0))
  np.testing.assert_allclose(np.asarray(start_f), [-14.25, -5.25])


def test_cma_es_moves_the_box_towards_the_target():
  choice = call("cma_es", 64, cma_sigma=0.1)
  assert choice.evals == 64.0
  assert score(choice.boxes)[0] > score(START)[0] + 0.05
  assert dice(choice.masks) > dice(peers.box_masks(SAM, jnp.zeros((1, 1, 1, 1)), DISK_FRAME,
                                                   START))


def test_random_search_keeps_its_best_scoring_box():
  choice = call("random_search", 16, seed=3, search_jitter=0.3)
  rng = peers._numpy_rng(jax.random.key(3))  # pylint: disable=protected-access
  from sampot_jax.sampot import baselines  # pylint: disable=g-import-not-at-top
  candidates = baselines.random_boxes(START, 16, 0.3, rng, DISK_FRAME.original_size)
  scores = score(candidates[0])
  np.testing.assert_array_equal(choice.boxes[0], candidates[0, np.argmax(scores)])
  assert scores.max() > scores[0]  # it found a better box than the rough one


def test_entropy_and_stability_consistency_known_answers():
  half = jnp.full((1, 1, 4, 4), 0.5)
  crisp = jnp.zeros((1, 1, 4, 4)).at[..., :2, :].set(1.0)
  np.testing.assert_allclose(np.asarray(peers.binary_entropy(half)), [[np.log(2)]], rtol=1e-5)
  assert float(peers.binary_entropy(crisp)[0, 0]) < 1e-4
  # Three candidates: two identical crisp masks, a third crisp one overlapping them by half,
  # and the same as the first but fuzzy at its edge (stable at +-delta on half its pixels).
  a = np.zeros((4, 4), np.float32)
  a[:2] = 0.99
  c = np.zeros((4, 4), np.float32)
  c[1:3] = 0.99
  fuzzy = a.copy()
  fuzzy[1] = 0.6  # above 0.5, below sigmoid(1)
  maps = jnp.asarray(np.stack([a, a, c, fuzzy])[None])
  score_ = np.asarray(peers.stability_consistency(maps, 1.0))[0]
  iou_ac = 4 / 12
  np.testing.assert_allclose(score_, [(1 + iou_ac + 1) / 3, (1 + iou_ac + 1) / 3,
                                      (iou_ac * 3) / 3, 0.5 * (1 + 1 + iou_ac) / 3], rtol=1e-5)
  assert int(np.argmax(score_)) == 0
  one = np.asarray(peers.stability_consistency(maps[:, :1], 1.0))
  np.testing.assert_allclose(one, [[1.0]])


def test_medsam_u_keeps_the_least_uncertain_box():
  choice = call("medsam_u", 8, seed=2, medsam_u_sigma=0.2, map_side=24)
  rng = peers._numpy_rng(jax.random.key(2))  # pylint: disable=protected-access
  candidates = peers.gaussian_boxes(START, 8, 0.2, rng, DISK_FRAME.original_size)
  assert candidates.shape == (1, 8, 4) and np.array_equal(candidates[:, 0], START)
  maps = peers.probability_maps(SAM, jnp.zeros((1, 1, 1, 1)), DISK_FRAME, candidates, 24)
  entropy = np.asarray(peers.binary_entropy(maps))[0]
  np.testing.assert_array_equal(choice.boxes[0], candidates[0, np.argmin(entropy)])


def test_saif_keeps_the_most_stable_consistent_box():
  choice = call("saif", 8, seed=5, saif_jitter=0.3, map_side=24)
  rng = peers._numpy_rng(jax.random.key(5))  # pylint: disable=protected-access
  from sampot_jax.sampot import baselines  # pylint: disable=g-import-not-at-top
  candidates = baselines.random_boxes(START, 8, 0.3, rng, DISK_FRAME.original_size)
  maps = peers.probability_maps(SAM, jnp.zeros((1, 1, 1, 1)), DISK_FRAME, candidates, 24)
  value = np.asarray(peers.stability_consistency(maps, 1.0))[0]
  np.testing.assert_array_equal(choice.boxes[0], candidates[0, np.argmax(value)])


def test_sampot_runs_the_steps_its_budget_buys():
  initial = call("initial", 1)
  assert call("sampot", 1).evals == 1.0
  np.testing.assert_array_equal(call("sampot", 5, step_cost=3.0).boxes, START)  # 0 steps
  choice = call("sampot", 41)  # 40 steps at 1 evaluation each: test_evolve's box case
  assert choice.evals == 41.0
  np.testing.assert_allclose(choice.boxes[0], TARGET_BOX[0], atol=1.5)
  assert dice(choice.masks) > dice(initial.masks) + 0.1
  # The same steps as evolve_prompts itself.
  res = evolve.evolve_prompts(SAM, SCORER, disk_batch(START),
                              evolve.Settings(learning_rate=1.0, num_steps=40))
  np.testing.assert_array_equal(choice.boxes, np.asarray(res.best_prompt))


def test_hybrid_searches_then_ascends():
  # Budget 24 at 2 per step: 12 boxes, then 5 steps (12 evaluations) from the best of them.
  choice = call("hybrid", 24, step_cost=2.0, search_jitter=0.3)
  assert choice.evals == 24.0
  population = call("random_search", 12, step_cost=2.0, search_jitter=0.3,
                    rng=jax.random.fold_in(jax.random.key(0), 0))  # the hybrid's own draw
  assert score(choice.boxes)[0] >= score(population.boxes)[0] - 1e-6
  # Too small a budget for a step: all of it to the population.
  small = call("hybrid", 6, step_cost=2.0)
  assert small.evals == 6.0


def test_the_bounds_reach_the_target():
  initial = call("initial", 1)
  gt = call("gt_box", 64)
  np.testing.assert_array_equal(gt.boxes, prompts.bounding_boxes(target_mask()))
  assert gt.evals == 1.0 and dice(gt.masks) > 0.9
  bound = call("true_dice_ascent", 41)
  assert bound.evals == 41.0
  assert dice(bound.masks) > max(0.9, dice(initial.masks) + 0.1)
  with pytest.raises(ValueError, match="bound"):
    batch = disk_batch(START)
    peers.gt_box(SAM, SCORER, batch.embeddings, DISK_FRAME, batch.images_small, START, 1,
                 jax.random.key(0), setup())


def test_measure_step_cost():
  batch = disk_batch(np.concatenate([START, TARGET_BOX]))
  cost = peers.measure_step_cost(SAM, SCORER, batch.embeddings, DISK_FRAME, batch.images_small,
                                 batch.prompts, evolve.Settings(), probes=4, repeats=2)
  assert cost["forward_seconds"] > 0 and cost["step_seconds"] > 0
  assert cost["ratio"] == pytest.approx(cost["step_seconds"] / cost["forward_seconds"])
  assert cost["step_cost"] == max(cost["ratio"], 1.0)
  values, grads = peers.candidate_scores(SAM, SCORER, batch.embeddings, DISK_FRAME,
                                         batch.images_small, batch.prompts[:, None],
                                         evolve.Settings(), grad=True)
  np.testing.assert_allclose(np.asarray(values)[:, 0], score(batch.prompts), rtol=1e-6)
  assert np.asarray(grads).shape == (2, 1, 4) and np.abs(np.asarray(grads)[0]).sum() > 0


# ---------------------------------------------------------------------------
# The task's configuration and report.


def test_config_peers_match_the_settings_defaults():
  from configs import compare  # pylint: disable=g-import-not-at-top
  config = compare.get_config()
  assert peers.Settings(**config.peers.to_dict()) == peers.Settings()
  assert set(config.methods) == set(peers.METHODS)


def test_plan_refuses_bad_settings():
  from configs import compare_tiny  # pylint: disable=g-import-not-at-top
  from sampot_jax.tasks import compare as compare_task  # pylint: disable=g-import-not-at-top
  plan = compare_task.plan_from_config(compare_tiny.get_config())
  assert plan.methods[0] == "initial" and plan.budgets == (1, 4, 8)
  assert plan.reported[-1] == "hybrid+guard" and plan.guard.rules == ("score_gain", "iou_agrees")
  for field, value, match in (("budgets", (8, 4), "increasing"), ("budgets", (0, 4), ">= 1"),
                              ("jitters", (0.1, 0.0), "jitters"), ("draws", 0, "draws"),
                              ("methods", ("sampot", "magic"), "magic"),
                              ("guarded", ("sam_u",), "config.guarded"),
                              ("guarded", ("initial",), "config.guarded")):
    config = compare_tiny.get_config()
    config[field] = value
    with pytest.raises(errors.ConfigError, match=match):
      compare_task.plan_from_config(config)
  config = compare_tiny.get_config()
  config.peers.chunk = 0
  with pytest.raises(errors.ConfigError, match="config.peers.chunk"):
    compare_task.plan_from_config(config)


def test_dice_vs_budget_plot(tmp_path):
  from sampot_jax.report import figures  # pylint: disable=g-import-not-at-top
  path = figures.dice_vs_budget(tmp_path / "plot.png", [1, 8, 64],
                                {"initial": ([0.8] * 3, [0.0] * 3),
                                 "sampot": ([0.8, 0.85, 0.9], [0.01, 0.02, 0.01]),
                                 "gt_box": ([0.95] * 3, [0.0] * 3)}, bounds=("gt_box",))
  assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.needs_data
def test_compare_tiny_end_to_end(tmp_path):
  from configs import compare_tiny  # pylint: disable=g-import-not-at-top
  from sampot_jax.tasks import compare as compare_task  # pylint: disable=g-import-not-at-top
  config = helpers.on_montgomery(compare_tiny.get_config(), tmp_path)
  summary = compare_task.run(config, tmp_path / "run")
  run = tmp_path / "run"
  for name in ("per_image.csv", "summary.json", "tables.md", "config.json",
               "dice_vs_budget_J0.1.png", "dice_vs_budget_J0.2.png"):
    assert (run / name).is_file(), name
  with open(run / "per_image.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  guarded = [f"{m}+guard" for m in config.guarded]
  methods, budgets, jitters = list(peers.METHODS) + guarded, (1, 4, 8), (0.1, 0.2)
  ids = sorted({r["id"] for r in rows})
  assert len(ids) == 3
  keys = {(r["id"], int(r["draw"]), float(r["jitter"]), r["method"], int(r["budget"]))
          for r in rows}
  assert len(rows) == len(keys) == 3 * 2 * 2 * len(methods) * 3
  assert keys == {(i, d, j, m, b) for i in ids for d in (0, 1) for j in jitters
                  for m in methods for b in budgets}
  for r in rows:
    assert 1 <= float(r["decoder_evals_used"]) <= int(r["budget"]), r
    assert 0 <= float(r["dice"]) <= 1 and float(r["seconds"]) > 0
  # Every method saw the same rough boxes in a draw: the evaluate task's draw, seeded by
  # box_seed + draw; the two draws differ.
  rough = {}
  for r in rows:
    box = tuple(float(r[f"rough_{k}"]) for k in ("x0", "y0", "x1", "y1"))
    rough.setdefault((r["id"], int(r["draw"]), float(r["jitter"])), set()).add(box)
  assert all(len(boxes) == 1 for boxes in rough.values())
  from sampot_jax.tasks import common  # pylint: disable=g-import-not-at-top
  ids_in_order, _, targets, _ = common.split_images(config)
  for d in (0, 1):
    expected = prompts.rough_boxes(prompts.bounding_boxes(targets), 0.2,
                                   np.random.default_rng(config.box_seed + d), targets.shape[1:])
    for i, sid in enumerate(ids_in_order):
      np.testing.assert_allclose(next(iter(rough[sid, d, 0.2])), expected[i], rtol=1e-6)
  assert rough[ids[0], 0, 0.2] != rough[ids[0], 1, 0.2]
  # The fixed methods spend 1 evaluation; SAMPOT at 2 per step buys 0, 1 and 3 steps.
  evals = {(r["method"], int(r["budget"])): float(r["decoder_evals_used"]) for r in rows}
  assert [evals["sampot", b] for b in budgets] == [1.0, 4.0, 8.0]
  assert [evals["gt_box", b] for b in budgets] == [1.0, 1.0, 1.0]
  # The bounds are no worse than the rough box on average.
  mean = lambda m: np.mean([float(r["dice"]) for r in rows if r["method"] == m])
  assert mean("gt_box") >= mean("initial") - 1e-9
  assert mean("true_dice_ascent") >= mean("initial") - 1e-9
  # The safeguard: a guarded method keeps its move where SAMPOT's score rose and the IoU head
  # did not fall (compare_tiny's rules), else the rough box and its Dice; the scores of the
  # rough box are the same for every method that keeps its box's mask.
  by_key = {(r["id"], r["draw"], r["jitter"], r["method"], r["budget"]): r for r in rows}
  seen = {"accepted": 0, "rejected": 0}
  for r in rows:
    if r["method"] not in guarded:
      continue
    method = r["method"][:-len("+guard")]
    own = by_key[r["id"], r["draw"], r["jitter"], method, r["budget"]]
    first = by_key[r["id"], r["draw"], r["jitter"], "initial", "1"]
    value = lambda name: float(own[name])  # pylint: disable=cell-var-from-loop
    assert value("score_rough") == float(first["score_rough"])
    ok = (value("score_kept") - value("score_rough") > config.safeguards.min_score_gain
          and value("iou_kept") >= value("iou_rough") - config.safeguards.max_iou_drop)
    assert int(float(r["accepted"])) == ok and own["accepted"] == "1", r
    source = own if ok else first
    assert float(r["dice"]) == float(source["dice"]), r
    assert [r[f"kept_{k}"] for k in ("x0", "x1")] == [source[f"kept_{k}"] for k in ("x0", "x1")]
    seen["accepted" if ok else "rejected"] += 1
  assert min(seen.values()) > 0, seen  # both branches ran
  assert all(r["score_kept"] == "" for r in rows if r["method"] in peers.NOT_BOX_MASKS)
  stored = json.loads((run / "summary.json").read_text())
  assert stored["step_cost"]["step_cost"] == 2.0 and stored["budgets"] == [1, 4, 8]
  cell = stored["results"]["0.2"]["sampot"]["8"]
  assert set(cell) == {"mean_dice", "improved_share", "degraded_share", "seconds_per_image",
                       "accepted_share", "decoder_evals_used"}
  per_draw = [np.mean([float(r["dice"]) for r in rows if r["method"] == "sampot"
                       and r["budget"] == "8" and r["jitter"] == "0.2" and r["draw"] == str(d)])
              for d in (0, 1)]
  np.testing.assert_allclose(cell["mean_dice"]["per_draw"], per_draw)
  np.testing.assert_allclose(cell["mean_dice"]["std"], np.std(per_draw, ddof=1))
  assert summary["results"] == stored["results"]
  tables = (run / "tables.md").read_text()
  assert tables.count("## J = ") == 2 and "| sampot | " in tables
