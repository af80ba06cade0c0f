"""Tests of train_regressor: resumption, outputs of a run, the regressor's evaluation."""
import json
import math

import jax
import ml_collections
import numpy as np
import pytest

from configs import regressor_paper_tiny
from sampot_jax.regressor import candidate_sets
from sampot_jax.regressor import evaluation
from sampot_jax.regressor import store
from sampot_jax.regressor import model as regressor
from sampot_jax.regressor import train as tr
from sampot_jax.tasks import train_regressor
from sampot_jax.sampot import metrics
from tests.helpers import SIZE, assert_trees_equal, disc, synthetic_config, synthetic_set

from tests.conftest import MONTGOMERY as DATA

needs_data = pytest.mark.needs_data


def test_epoch_order_depends_only_on_seed_and_epoch():
  a = tr.epoch_order(0, 3, 50)
  np.testing.assert_array_equal(a, tr.epoch_order(0, 3, 50))
  assert sorted(a.tolist()) == list(range(50))
  assert not np.array_equal(a, tr.epoch_order(0, 4, 50))
  assert not np.array_equal(a, tr.epoch_order(1, 3, 50))


def test_resume_after_kill_ends_where_uninterrupted_run_ends(tmp_path):
  train_set, val_set = synthetic_set(6, 0), synthetic_set(3, 1)
  config = synthetic_config(num_epochs=4, checkpoint_every=2)
  straight = tr.train(config, tmp_path / "straight", train_set, val_set)
  # Killed after epoch 3: only the epoch-2 checkpoint survives, so the
  # resumed run redoes epoch 3 before finishing epoch 4.
  tr.train(config, tmp_path / "killed", train_set, val_set,
           halt_after_epoch=3)
  assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints")
                .iterdir() if p.name.isdigit()) == ["2"]
  resumed = tr.train(config, tmp_path / "killed", train_set, val_set)
  assert int(resumed["epoch"]) == int(straight["epoch"]) == 4
  assert_trees_equal(straight, resumed)
  # Parameters moved during training, so the equality above is not vacuous.
  init = tr._initial_state(config, regressor.from_config(config.model),
                           __import__("optax").adam(1e-3))
  assert not np.array_equal(
      np.asarray(jax.tree.leaves(init["params"])[0]),
      np.asarray(jax.tree.leaves(resumed["params"])[0]))


def test_finished_run_is_not_retrained(tmp_path):
  train_set, val_set = synthetic_set(6, 0), synthetic_set(3, 1)
  config = synthetic_config(num_epochs=2, checkpoint_every=5)
  first = tr.train(config, tmp_path, train_set, val_set)
  again = tr.train(config, tmp_path, train_set, val_set)
  assert_trees_equal(first, again)
  # The final epoch is checkpointed even off the every-k grid.
  assert (tmp_path / "checkpoints" / "2").is_dir()


def test_patience_stops_early(tmp_path):
  train_set, val_set = synthetic_set(6, 0), synthetic_set(3, 1)
  config = synthetic_config(num_epochs=40)
  config.patience = 2
  state = tr.train(config, tmp_path, train_set, val_set)
  epochs, best = int(state["epoch"]), int(state["best_epoch"])
  assert epochs < 40 and epochs - 1 - best == 2


def test_too_few_candidates_for_a_batch_names_the_field(tmp_path):
  config = synthetic_config()
  config.batch_size = 1000
  with pytest.raises(ValueError, match="batch_size"):
    tr.train(config, tmp_path, synthetic_set(2, 0), synthetic_set(2, 1))


def test_sweep_masks_erode_and_dilate():
  target = disc(SIZE, 16, 16, 8)
  masks = evaluation.sweep_masks(target, (-4, -2, 0, 2, 4))
  np.testing.assert_array_equal(masks[2], target)
  sizes = masks.sum(axis=(1, 2))
  assert np.all(np.diff(sizes) > 0)
  assert np.all(masks[1] <= target) and np.all(target <= masks[3])
  # Eroding a radius-8 disc by 4 px leaves about a radius-4 disc.
  assert abs(sizes[0] - math.pi * 4 ** 2) < 0.3 * math.pi * 4 ** 2


def test_soft_dice_against_hard_reference_is_dice():
  a, b = disc(SIZE, 14, 14, 6), disc(SIZE, 17, 16, 7)
  got = metrics.soft_dice(a[None], b.astype(np.float32))[0]
  assert got == pytest.approx(metrics.dice(a, b), rel=1e-6)


def test_evaluate_predictions_groups_and_targets():
  cands = synthetic_set(4, 2)
  kinds = np.array(["shift", "leak_outside"] * (len(cands) // 2))
  cands = candidate_sets.CandidateSet(**{**cands.__dict__, "kinds": kinds})
  perfect = cands.dice.copy()
  by_kind = evaluation.evaluate_predictions(perfect, perfect * 0.5, cands,
                               ("shift", "leak_outside"))
  assert set(by_kind) - {"true_dice>=0.8"} == {"all", "failure_modes",
                                               "shift", "leak_outside"}
  assert by_kind["all"]["regressor"]["pearson_r"] == pytest.approx(1.0)
  assert by_kind["all"]["regressor"]["mae"] == 0.0
  assert by_kind["shift"]["n"] + by_kind["leak_outside"]["n"] == len(cands)
  targets = evaluation.check_targets(by_kind, {"median_spearman_rho": 0.5},
                             ("shift", "leak_outside"))
  assert targets["all_pearson_r>=0.95"]["pass"]
  assert not targets["sweep_median_spearman_rho>=0.9"]["pass"]
  assert "leak_outside_pearson_r>=0.80" in targets


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
  """The tiny config trained on a few real Montgomery images."""
  workdir = tmp_path_factory.mktemp("tiny_real")
  config = regressor_paper_tiny.get_config()
  config.data.dir = str(DATA)
  config.num_epochs = 6
  summary = train_regressor.run(config, str(workdir))
  return config, workdir, summary


def finite_numbers(obj):
  """All numbers in a JSON tree; None (a NaN written as null) fails."""
  if isinstance(obj, dict):
    return all(finite_numbers(v) for v in obj.values())
  if isinstance(obj, list):
    return all(finite_numbers(v) for v in obj)
  if obj is None:
    return False
  if isinstance(obj, (int, float)) and not isinstance(obj, bool):
    return math.isfinite(obj)
  return True


@needs_data
def test_real_run_writes_metrics_and_regressor_eval(real_run):
  config, workdir, _ = real_run
  summary = json.loads((workdir / "metrics.json").read_text())
  report = json.loads((workdir / "regressor_eval.json").read_text())
  assert summary["epochs_run"] == config.num_epochs
  assert len(summary["history"]) == config.num_epochs
  assert finite_numbers(summary)
  for kind in ("all", "failure_modes", "level_set", "leak_other_lung",
               "leak_outside"):
    assert finite_numbers(report["by_kind"][kind]), kind
  # The reported r is the one of the saved regressor's predictions on the test candidates.
  variables = store.load(workdir).variables
  test = candidate_sets.load_or_build_candidates(config, workdir, "test")
  predict = evaluation.make_predict(regressor.from_config(config.model), config.eval_batch_size)
  pred = evaluation.predict_candidates(predict, variables, test)
  assert report["by_kind"]["all"]["regressor"]["pearson_r"] == pytest.approx(
      metrics.pearson(pred, test.dice), abs=1e-6)
  assert report["num_candidates"] == len(test)
  assert math.isfinite(report["sweeps"]["median_spearman_rho"])
  assert set(report["targets"]) >= {"all_pearson_r>=0.95", "all_mae<=0.05"}
  # Whole-anatomy mistakes: the right lung alone has Dice 0 with the left.
  anatomy = report["anatomy"]
  assert anatomy["other_lung_only"]["true_max"] == 0.0
  assert 0 < anatomy["both_lungs"]["true_mean"] < 1
  assert finite_numbers(anatomy)
  for check in anatomy.values():
    assert 0.0 <= check["outranks_better_sweep"] <= 1.0
  table = (workdir / "regressor_eval.md").read_text()
  assert "| leak_other_lung |" in table and "| all_mae<=0.05 |" in table
  png = (workdir / "regressor_scatter.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  # No temporary file is left behind.
  assert not list(workdir.glob(".*"))


@needs_data
def test_real_run_loss_decreases(real_run):
  _, _, summary = real_run
  losses = [h["train_loss"] for h in summary["history"]]
  assert losses[-1] < 0.7 * losses[0], losses
  # The kept model is the epoch with the lowest validation loss.
  val = [h["val_loss"] for h in summary["history"]]
  assert summary["best_epoch"] == int(np.argmin(val)) + 1
  assert summary["best_val_loss"] == pytest.approx(min(val))


@needs_data
def test_load_reproduces_the_evaluation(real_run):
  config, workdir, _ = real_run
  scorer = store.load(workdir)
  score_fn, variables = scorer.fn, scorer.variables
  test = candidate_sets.load_or_build_candidates(config, workdir, "test")
  idx = np.arange(8)
  images, masks, _ = candidate_sets.batch(test, idx)
  got = np.asarray(jax.jit(score_fn)(variables, images, masks))
  model = regressor.from_config(config.model)
  want = evaluation.make_predict(model, config.eval_batch_size)(variables, images,
                                                        masks)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.all((got >= 0) & (got <= 1))


@needs_data
def test_rerun_reuses_candidates_and_checkpoint(real_run):
  config, workdir, summary = real_run
  caches = sorted((workdir / "candidates").glob("*.npz"))
  assert len(caches) == 3
  stamps = [p.stat().st_mtime_ns for p in caches]
  again = train_regressor.run(config, str(workdir))
  assert [p.stat().st_mtime_ns for p in caches] == stamps
  assert again["history"] == summary["history"]
  assert again["test_pearson_r"] == pytest.approx(summary["test_pearson_r"])


def test_load_without_training_says_how(tmp_path):
  with pytest.raises(FileNotFoundError, match="no regressor was trained there. Train one"):
    store.load(tmp_path)


def test_augment_moves_image_and_mask_together_and_keeps_dice():
  targets = np.stack([disc(SIZE, 16, 15, 7), disc(SIZE, 14, 17, 8)])
  cands = np.stack([disc(SIZE, 18, 15, 6), disc(SIZE, 14, 20, 9)])
  before = [metrics.dice(c, t) for c, t in zip(cands, targets)]
  # The target rides in the image slot: it must get the mask's exact shift.
  images, masks = tr.augment(jax.random.key(3), targets.astype(np.float32),
                             cands.astype(np.float32), max_shift=0.2,
                             max_log_gamma=0.0)
  images, masks = np.asarray(images), np.asarray(masks)
  assert images.shape == masks.shape == (2, SIZE, SIZE)
  assert not np.array_equal(masks, cands)  # something moved
  assert set(np.unique(masks)) <= {0.0, 1.0}  # still binary
  after = [metrics.dice(c > 0.5, t > 0.5) for c, t in zip(masks, images)]
  np.testing.assert_allclose(after, before, atol=1e-6)
  # Photometric jitter stays in [0, 1] and changes only the image.
  noise = np.random.default_rng(0).uniform(size=(2, SIZE, SIZE))
  im2, ma2 = tr.augment(jax.random.key(3), noise.astype(np.float32),
                        cands.astype(np.float32), max_shift=0.0,
                        max_log_gamma=0.5)
  assert 0.0 <= float(im2.min()) and float(im2.max()) <= 1.0
  assert not np.allclose(np.asarray(im2), noise, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(ma2), cands.astype(np.float32))


def test_model_made_compares_the_regressor_with_the_iou_head():
  cands = synthetic_set(4, 3)
  kinds = np.array(["model_box"] * len(cands))
  rng = np.random.default_rng(0)
  iou = cands.dice + rng.normal(0, 0.2, len(cands)).astype(np.float32)  # a noisy IoU head
  cands = candidate_sets.CandidateSet(**{**cands.__dict__, "kinds": kinds, "model_iou": iou})
  made = evaluation.model_made(cands.dice.copy(), cands)  # a perfect regressor
  assert made["n"] == len(cands)
  assert made["regressor"]["pearson_r"] == pytest.approx(1.0)
  assert made["regressor"]["median_within_image_spearman"] == pytest.approx(1.0)
  assert made["regressor"]["median_top1_regret"] == made["regressor"]["mean_top1_regret"] == 0
  # The IoU head's regret, image by image: the best mask's Dice minus that of its first pick.
  regrets = [cands.dice[cands.image_index == i].max()
             - cands.dice[cands.image_index == i][np.argmax(iou[cands.image_index == i])]
             for i in range(4)]
  assert made["iou_head"]["mean_top1_regret"] == pytest.approx(np.mean(regrets))
  assert made["iou_head"]["median_top1_regret"] == pytest.approx(np.median(regrets))
  assert made["iou_head"]["mean_top1_regret"] > 0
  assert made["iou_head"]["pearson_r"] < 0.99
  assert made["iou_head"]["pearson_r"] == pytest.approx(metrics.pearson(iou, cands.dice))
  assert evaluation.model_made(cands.dice, candidate_sets.CandidateSet(
      **{**cands.__dict__, "kinds": np.array(["shift"] * len(cands))})) == {}


def test_candidate_parts_are_cached_apart_and_train_val_may_differ(tmp_path, monkeypatch):
  """The model's masks are a part of their own: more boxes for train/val rebuild only that part,
  the test split keeps config.candidates (the benchmark), and the synthetic part is the same
  whatever the model part."""
  from sampot_jax.runtime import settings
  from sampot_jax.data import fake_data
  fake_data.write("montgomery_team", tmp_path / "raw", n=9)
  config = regressor_paper_tiny.get_config()
  config.data.dir, config.data.tfds_dir = str(tmp_path / "raw"), str(tmp_path / "tfds")
  config.candidates.model_boxes = 2
  config.sam = settings.block(settings.Sam(checkpoint_dir=str(tmp_path / "unused"), variant="lite_medsam"))

  def box_segmenter(_):  # a stand-in model: the box itself, and its width as the "IoU"
    def segment(image, boxes):
      ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
      masks = np.stack([(xs >= b[0]) & (xs <= b[2]) & (ys >= b[1]) & (ys <= b[3])
                        for b in boxes])
      return masks, boxes[:, 2] - boxes[:, 0]
    return segment
  monkeypatch.setattr(candidate_sets, "_box_segmenter", box_segmenter)

  def model_count(split):
    cands = candidate_sets.load_or_build_candidates(config, tmp_path / "run", split)
    return cands, np.bincount(cands.image_index[cands.kinds == "model_box"]).tolist()

  train, counts = model_count("train")
  assert counts == [2] * len(train.ids)
  config.train_val_candidates = ml_collections.ConfigDict({"model_boxes": 5})
  synthetic = sorted((tmp_path / "run" / "candidates").glob("train_synthetic_*.npz"))
  stamp = synthetic[0].stat().st_mtime_ns
  more, counts = model_count("train")
  assert counts == [5] * len(more.ids)
  assert synthetic[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
  assert sorted((tmp_path / "run" / "candidates").glob("train_synthetic_*.npz")) == synthetic
  assert len(list((tmp_path / "run" / "candidates").glob("train_model_*.npz"))) == 2
  keep = more.kinds != "model_box"
  np.testing.assert_array_equal(more.masks[keep], train.masks[train.kinds != "model_box"])
  assert np.isnan(more.model_iou[keep]).all() and not np.isnan(more.model_iou[~keep]).any()
  np.testing.assert_allclose(more.dice[~keep], [metrics.dice(m, more.targets[i]) for m, i in
                                                zip(more.masks[~keep], more.image_index[~keep])])
  test, counts = model_count("test")
  assert counts == [2] * len(test.ids)


def test_the_iou_weight_is_chosen_where_the_blend_orders_masks_best():
  """Regressor and IoU head with independent errors: a blend orders each image's masks better
  than either, and choose_iou_weight finds an inner weight; a perfect regressor gets 0."""
  cands = synthetic_set(60, 2)
  rng = np.random.default_rng(1)
  iou = (cands.dice + rng.normal(0, 0.1, len(cands))).astype(np.float32)
  pred = (cands.dice + rng.normal(0, 0.1, len(cands))).astype(np.float32)
  cands = candidate_sets.CandidateSet(**{**cands.__dict__, "model_iou": iou,
                                         "kinds": np.array(["model_box"] * len(cands))})
  weight, rho = evaluation.choose_iou_weight(pred, cands)
  assert 0 < weight < 1 and rho[weight] == max(rho.values())
  assert rho[weight] > max(rho[0.0], rho[1.0])
  made = evaluation.model_made(pred, cands, iou_weight=weight)
  np.testing.assert_allclose(made["blend"]["pearson_r"], metrics.pearson(
      (1 - weight) * pred + weight * iou, cands.dice), rtol=1e-6)
  assert evaluation.choose_iou_weight(cands.dice.copy(), cands)[0] == 0.0


def test_rank_loss_counts_the_ordered_pairs_of_one_image_only():
  pred = np.array([0.9, 0.5, 0.2, 0.7], np.float32)
  dice = np.array([0.8, 0.9, 0.1, 0.0], np.float32)
  softplus = lambda x: np.log1p(np.exp(x))
  # Runs of 2: (0, 1) and (2, 3); 1 is better than 0, 2 than 3 (by 0.1 each).
  expected = np.mean([softplus(-20 * (0.5 - 0.9)), softplus(-20 * (0.2 - 0.7))])
  np.testing.assert_allclose(tr.rank_loss(pred, dice, 2, 20.0, 0.02), expected, rtol=1e-6)
  assert float(tr.rank_loss(pred, dice, 2, 20.0, 0.2)) == 0.0  # no pair apart by > 0.2
  # One run of 4: every ordered pair of the four counts (the 0.8 vs 0.1 pair among them).
  pairs = [(i, j) for i in range(4) for j in range(4) if dice[i] - dice[j] > 0.02]
  expected = np.mean([softplus(-20 * (pred[i] - pred[j])) for i, j in pairs])
  np.testing.assert_allclose(tr.rank_loss(pred, dice, 4, 20.0, 0.02), expected, rtol=1e-6)


def test_grouped_order_is_runs_of_one_image():
  index = np.repeat(np.arange(5), [7, 3, 6, 1, 9])
  order = tr.grouped_order(0, 2, index, 3)
  np.testing.assert_array_equal(order, tr.grouped_order(0, 2, index, 3))
  assert not np.array_equal(order, tr.grouped_order(0, 3, index, 3))
  assert len(order) == 3 * (2 + 1 + 2 + 0 + 3) and len(set(order.tolist())) == len(order)
  runs = index[order].reshape(-1, 3)
  assert (runs == runs[:, :1]).all()  # each run from one image
  assert len(np.unique(runs[:, 0])) == 4  # the image of one candidate sits out


def test_a_ranked_step_adds_the_weighted_rank_loss(tmp_path):
  """The jitted step's loss is the MSE plus rank.weight x rank_loss on the same predictions."""
  import optax  # pylint: disable=g-import-not-at-top
  from sampot_jax.runtime import settings  # pylint: disable=g-import-not-at-top
  config = synthetic_config()
  model = regressor.from_config(config.model)
  tx = optax.adam(1e-3)
  state = tr._initial_state(config, model, tx)
  cands = synthetic_set(2, 0)
  rows = tr.grouped_order(0, 0, cands.image_index, 3)[:6]
  images, masks, dice = candidate_sets.batch(cands, rows)
  args = (state["params"], state["batch_stats"], state["opt_state"], images, masks, dice,
          jax.random.key(0))
  plain = tr.make_train_step(model, tx, None, settings.Rank())(*args)[-1]
  rank = settings.Rank(weight=2.0, group=3)
  ranked = tr.make_train_step(model, tx, None, rank)(*args)[-1]
  pred, _ = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                        images, masks, train=True, mutable=["batch_stats"])
  extra = 2.0 * tr.rank_loss(pred, dice, 3, rank.temperature, rank.min_gap)
  assert float(extra) > 0
  np.testing.assert_allclose(float(ranked), float(plain) + float(extra), rtol=1e-5)


def test_a_ranked_run_trains_and_its_settings_guard_resumption(tmp_path):
  config = synthetic_config(num_epochs=2)
  config.batch_size, config.rank.weight, config.rank.group = 6, 1.0, 3
  state = tr.train(config, tmp_path, synthetic_set(6, 0), synthetic_set(3, 1))
  assert int(state["epoch"]) == 2 and np.isfinite(np.asarray(state["train_loss"])).all()
  config.rank.weight = 0.5
  with pytest.raises(Exception, match="rank.weight: 1.0 -> 0.5"):
    tr.train(config, tmp_path, synthetic_set(6, 0), synthetic_set(3, 1))
  config.batch_size = 8
  with pytest.raises(ValueError, match="batch_size=8 is not a multiple of config.rank.group=3"):
    tr.train(config, tmp_path / "other", synthetic_set(6, 0), synthetic_set(3, 1))
