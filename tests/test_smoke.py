"""The smoke config end to end, as a user runs it: python main.py --config configs/smoke.py.

Runs in a subprocess (a fresh JAX, as on the command line). XLA's CPU backend
optimisation is off there: the tiny run is compile-bound, the code paths are the
same, and it halves the time on a small machine.
"""
import csv
import json
import math
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the whole pipeline through main.py

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("fig1_dice_heatmap.png", "fig4_score_vs_dice.png", "fig5_trajectory.png",
           "fig6_initial_vs_evolved.png")
METHODS = ("initial", "evolved", "safeguarded", "multimask", "grid_search", "true_dice_grid")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smoke")
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "main.py", "--config", "configs/smoke.py", "--workdir", str(workdir)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir


def leaves(tree, path=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from leaves(v, f"{path}.{k}")
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from leaves(v, f"{path}[{i}]")
  else:
    yield path, tree


def test_summary_has_every_figure_and_finite_numbers(smoke_run):
  summary = json.loads((smoke_run / "summary.json").read_text())
  assert summary["num_images"] == 6
  for key in ("evolved_vs_initial", "safeguarded_vs_initial"):
    counts = summary[key]
    assert counts["improved"] + counts["degraded"] + counts["unchanged"] == 6
    for name in ("improved", "degraded", "significantly_improved"):
      assert counts[f"{name}_share"] == pytest.approx(counts[name] / 6)
  assert set(summary["dice"]) == set(METHODS)
  for method in METHODS:
    assert 0.0 <= summary["dice"][method]["mean"] <= 1.0
  r = summary["pearson_r_at_initial_clicks"]
  assert set(r) == {"regressor_score_vs_dice", "sam_iou_vs_dice"}
  assert set(summary["safeguards"]["per_rule"]) == {"score_gain", "mask_overlap",
                                                    "click_inside", "all"}
  assert summary["figures"] == list(FIGURES)
  assert summary["embeddings_encoded"] == 6
  for path, value in leaves(summary):
    assert value is not None, f"summary{path} is null (a NaN)"
    if isinstance(value, float):
      assert math.isfinite(value), f"summary{path} = {value}"


def test_results_csv_has_a_row_per_image(smoke_run):
  with open(smoke_run / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6
  assert len({row["id"] for row in rows}) == 6
  for row in rows:
    for method in METHODS:
      assert 0.0 <= float(row[f"dice_{method}"]) <= 1.0
    for name in ("initial", "evolved", "safeguarded", "grid_search", "true_dice_grid"):
      assert 0.0 <= float(row[f"{name}_x"]) <= 63.0 and 0.0 <= float(row[f"{name}_y"]) <= 63.0
    assert math.isfinite(float(row["score_evolved"]))
    # The safeguarded prompt is the evolved one when accepted, else the initial one.
    keep = "evolved" if row["accepted"] == "True" else "initial"
    assert row["dice_safeguarded"] == row[f"dice_{keep}"]


def test_figures_are_non_empty_pngs(smoke_run):
  for name in FIGURES:
    data = (smoke_run / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    assert len(data) > 10_000, name


def test_trajectories_are_saved(smoke_run):
  with np.load(smoke_run / "trajectories.npz") as z:
    assert z["prompts"].shape == (6, 2, 9, 2)  # images, starts, steps + 1, (x, y)
    assert z["scores"].shape == (6, 2, 9)
    assert z["grid_dice"].shape == (6, 36)
    assert np.isfinite(z["scores"]).all()
    grid_best = dict(zip(z["ids"].tolist(), z["grid_dice"].max(axis=1)))
    best_score = dict(zip(z["ids"].tolist(), z["scores"].max(axis=(1, 2))))
    first_score = dict(zip(z["ids"].tolist(), z["scores"][:, 0, 0]))
  with open(smoke_run / "results.csv", newline="") as f:
    for row in csv.DictReader(f):
      # The true-Dice grid is the best true Dice over the grid.
      assert float(row["dice_true_dice_grid"]) == pytest.approx(grid_best[row["id"]])
      # The report's scores are the trajectory's: its first point and its maximum.
      assert float(row["score_evolved"]) == pytest.approx(best_score[row["id"]], rel=1e-6)
      assert float(row["score_initial"]) == pytest.approx(first_score[row["id"]], rel=1e-6)


def test_heatmap_task_reuses_the_cached_embeddings(smoke_run, tmp_path, monkeypatch):
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from sampot_jax.tasks import heatmap  # pylint: disable=g-import-not-at-top
  from sampot_jax.sam import predictor  # pylint: disable=g-import-not-at-top

  def no_encoding(*args, **kwargs):
    raise AssertionError("the heat map re-encoded an image the smoke run had cached")

  monkeypatch.setattr(predictor, "encode_images", no_encoding)
  config = smoke.get_config()
  config.task = "heatmap"
  config.data.dir = str(smoke_run / "data" / "folder-12images")
  config.embedding_cache_dir = str(smoke_run / "embeddings")
  config.heatmap = dict(ids=("MCUCXR_0005_0",), num_images=1, grid_size=4)
  written = heatmap.run(config, tmp_path)
  assert written == ["heatmap_MCUCXR_0005_0.png"]
  assert (tmp_path / written[0]).stat().st_size > 10_000
  with np.load(tmp_path / "heatmap_MCUCXR_0005_0.npz") as z:
    assert z["dice"].shape == (16,) and np.all((z["dice"] >= 0) & (z["dice"] <= 1))
  config.heatmap.ids = ("nobody",)
  with pytest.raises(ValueError, match="'nobody'"):
    heatmap.run(config, tmp_path)


def test_generated_data_is_keyed_by_its_settings(tmp_path):
  """A rerun with another number of images gets its own data, not the first run's."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from sampot_jax.tasks import smoke as smoke_task  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.num_fake_images = 3
  first = smoke_task.prepare_data(config, tmp_path)
  config.num_fake_images = 6
  second = smoke_task.prepare_data(config, tmp_path)
  assert first != second
  assert len(list((first / "images").glob("*.png"))) == 3
  assert len(list((second / "images").glob("*.png"))) == 6
  (second / "images" / "MCUCXR_0001_0.png").unlink()  # generated.json stays: reused as is
  assert smoke_task.prepare_data(config, tmp_path) == second
  assert not (second / "images" / "MCUCXR_0001_0.png").exists()

