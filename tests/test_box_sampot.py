"""SAMPOT with boxes: rough-box stand-ins, box prompts files, and the LiteMedSAM configs end to end
on tiny random models and three real X-rays (the real-weight figures are in docs/sampot.md)."""
import csv
import json

import numpy as np
import pytest

from sampot_jax.sampot import prompts
from tests import helpers
from tests.conftest import MONTGOMERY


def test_rough_boxes_move_each_coordinate_within_the_jitter():
  masks = np.zeros((2, 40, 50), bool)
  masks[0, 10:30, 5:25] = True
  masks[1, 2:8, 40:50] = True
  boxes = prompts.bounding_boxes(masks)
  np.testing.assert_array_equal(boxes, [[5, 10, 24, 29], [40, 2, 49, 7]])
  rough = prompts.rough_boxes(boxes, 0.15, np.random.default_rng(0))
  size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
  assert np.all(np.abs(rough - boxes) <= 0.15 * size + 1e-4)
  assert not np.allclose(rough, boxes)
  # One draw of 4 per box, in order: the first box does not depend on the second.
  first = prompts.rough_boxes(boxes[:1], 0.15, np.random.default_rng(0))
  np.testing.assert_array_equal(first, rough[:1])
  clipped = prompts.rough_boxes(boxes, 2.0, np.random.default_rng(1), (40, 50))
  assert clipped.min() >= 0 and clipped[:, [0, 2]].max() <= 49 and clipped[:, [1, 3]].max() <= 39
  assert np.all(clipped[:, 2:] > clipped[:, :2])
  with pytest.raises(ValueError, match="image 'b' is empty"):
    prompts.bounding_boxes(np.zeros((1, 4, 4), bool), ids=["b"])


@pytest.mark.slow
@pytest.mark.needs_data
def test_lite_medsam_evaluate_tiny_writes_every_box_method(tmp_path):
  from configs import lite_medsam_evaluate_tiny
  from sampot_jax.tasks import evaluate
  config = helpers.on_montgomery(lite_medsam_evaluate_tiny.get_config(), tmp_path)
  summary = evaluate.run(config, tmp_path / "run")
  assert summary["prompt"] == "box" and summary["box_jitter"] == 0.15
  methods = {"initial", "evolved", "safeguarded", "multimask", "iou_ascent", "random_search",
             "true_dice_ascent", "gt_box"}
  assert set(summary["dice"]) == methods
  assert set(summary["vs_initial"]) == methods - {"initial"}
  with open(tmp_path / "run" / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3
  for row in rows:
    for method in ("initial", "evolved", "gt_box", "random_search"):
      x0, y0, x1, y1 = (float(row[f"{method}_{k}"]) for k in ("x0", "y0", "x1", "y1"))
      assert 0 <= x0 < x1 <= 63 and 0 <= y0 < y1 <= 63, (method, row)
    for method in methods:
      assert 0.0 <= float(row[f"dice_{method}"]) <= 1.0
  with np.load(tmp_path / "run" / "trajectories.npz") as z:
    assert z["prompts"].shape == (3, 1, 5, 4)  # images, starts, steps + 1, box
  # The initial boxes are the seeded rough boxes of the ground truth.
  json.loads((tmp_path / "run" / "config.json").read_text())
  # docs/sampot.md's table, from this run: one row per method with its counts.
  from sampot_jax.report import summary_table
  rows = summary_table.table([summary_table.read(tmp_path / "run")]).splitlines()
  evolved = next(r for r in rows if r.startswith("| 0.15 | evolved |"))
  v = summary["vs_initial"]["evolved"]
  assert evolved == (f"| 0.15 | evolved | {summary['dice']['evolved']['mean']:.3f} | "
                     f"{summary['dice']['evolved']['median']:.3f} | {v['improved']}/3 | "
                     f"{v['degraded_by_more_than_0.02']}/3 | {v['significantly_improved']}/3 |")
  assert sum(r.startswith("| 0.15 | ") for r in rows) == len(methods) + 1  # + seconds row


@pytest.mark.slow
@pytest.mark.needs_data
def test_lite_medsam_regressor_tiny_reports_model_made_masks(tmp_path):
  from configs import lite_medsam_regressor_tiny
  from sampot_jax.tasks import train_regressor  # pylint: disable=g-import-not-at-top
  config = lite_medsam_regressor_tiny.get_config()
  config.data.dir = str(MONTGOMERY)
  config.data.tfds_dir = str(tmp_path / "tfds")
  train_regressor.run(config, str(tmp_path / "run"))
  report = json.loads((tmp_path / "run" / "regressor_eval.json").read_text())
  made = report["model_made"]
  assert made["n"] == 3 * 3  # 3 test images x 3 boxes
  assert report["by_kind"]["model_box"]["n"] == made["n"]
  for name in ("regressor", "iou_head"):
    assert set(made[name]) >= {"pearson_r", "mae", "band_pearson_r",
                               "median_within_image_spearman"}
  val = report["val_model_made"]  # where regressors are compared and chosen
  assert val["n"] > 0 and set(val["regressor"]) >= {"median_within_image_spearman",
                                                      "median_top1_regret"}
  text = (tmp_path / "run" / "regressor_eval.md").read_text()
  assert "Model-made masks of the test split" in text and "of the val split" in text


def test_summary_table_rows_follow_the_summaries():
  from sampot_jax.report import summary_table
  counts = lambda i, d, s: {"improved": i, "degraded_by_more_than_0.02": d,
                            "significantly_improved": s}
  run = lambda j, mean: {"box_jitter": j, "num_images": 4, "seconds_per_image": {"all": 1.5},
                         "dice": {"initial": {"mean": 0.5, "median": 0.25},
                                  "evolved": {"mean": mean, "median": 0.875}},
                         "vs_initial": {"evolved": counts(3, 1, 2)}}
  rows = summary_table.table([run(0.2, 0.75), run(0.05, 0.625)]).splitlines()
  assert rows[2:6] == ["| 0.05 | initial | 0.500 | 0.250 |  |  |  |",
                       "| 0.05 | evolved | 0.625 | 0.875 | 3/4 | 1/4 | 2/4 |",
                       "| 0.2 | initial | 0.500 | 0.250 |  |  |  |",
                       "| 0.2 | evolved | 0.750 | 0.875 | 3/4 | 1/4 | 2/4 |"]
  assert rows[-2:] == ["| 0.05 | all 1.50 |", "| 0.2 | all 1.50 |"]
