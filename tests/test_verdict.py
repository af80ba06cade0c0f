"""Your own regressor from a labelled folder and its verdict (configs/train_regressor.py,
regressor/verdict.py, the verdict task), fine-tuning from a shipped regressor on a few images."""
import json

import jax
import numpy as np
import pytest

from configs import train_regressor_tiny
from configs import verdict_tiny
from sampot_jax import errors
from sampot_jax.data import fake_data
from sampot_jax.regressor import resume
from sampot_jax.regressor import shipped
from sampot_jax.regressor import store
from sampot_jax.regressor import train as tr
from sampot_jax.regressor import verdict
from sampot_jax.regressor import model as regressor
from sampot_jax.tasks import train_regressor
from sampot_jax.tasks import verdict as verdict_task


def _runs(initial, sampot, iou=None):
  runs = {"initial": np.asarray(initial), "sampot": np.asarray(sampot),
          "accepted": np.ones(len(initial), bool)}
  if iou is not None:
    runs["iou_ascent"] = np.asarray(iou)
  return runs


@pytest.mark.parametrize("sampot, iou, use, why", [
    ([0.9, 0.9, 0.9, 0.9], [0.85] * 4, True, "SAMPOT should use it: W"),
    ([0.8, 0.8, 0.8, 0.8], [0.85] * 4, False, "does not raise the mean Dice"),
    ([0.99, 0.99, 0.99, 0.75], [0.85] * 4, False, "makes over 5% of the images worse"),
    ([0.9, 0.9, 0.9, 0.9], [0.95] * 4, False, "--config.evolve.objective=iou"),
    ([0.9, 0.9, 0.9, 0.9], [0.904] * 4, True, "SAMPOT should use it"),  # within TIE
])
def test_the_sentence_follows_the_rule(sampot, iou, use, why):
  found = verdict.judge({}, _runs([0.8] * 4, sampot, iou), where="W")
  assert found["use"] is use
  assert why in found["sentence"] and found["sentence"].count(".") >= 2
  assert found["sentence"].startswith("On 4 held-out images")
  assert ("Yes:" if use else "No:") in found["sentence"]
  assert "IoU head" in verdict.markdown(found)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A plain folder of 10 fake chest X-rays, no splits.csv, the left lung in masks/lung/."""
  root = tmp_path_factory.mktemp("own") / "data"
  fake_data.write("folder", root, n=10)
  (root / "masks" / "left").rename(root / "masks" / "lung")
  for path in (root / "masks" / "right").iterdir():
    path.unlink()
  (root / "masks" / "right").rmdir()
  return root


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
  config = train_regressor_tiny.get_config()
  config.data.dir, config.data.target = str(folder), "lung"
  workdir = tmp_path_factory.mktemp("own_run")
  summary = train_regressor.run(config, str(workdir))
  return config, workdir, summary


def test_a_labelled_folder_trains_a_regressor_with_a_verdict(trained, folder):
  config, workdir, summary = trained
  # The seeded split the run used is written beside it, and reads back as the data's split.
  rows = (workdir / "splits.csv").read_text().splitlines()
  assert rows[0] == "id,split,finding" and len(rows) == 11
  found = json.loads((workdir / "verdict.json").read_text())
  assert found["images"] == config.verdict.images == len(found["ids"])
  assert found["sentence"] == summary["verdict"] and summary["verdict_use"] == found["use"]
  assert f"--config.regressor.workdir={workdir}" in found["sentence"] or not found["use"]
  assert set(found["dice"]) == {"initial", "evolved", "sampot", "iou_ascent"}
  # SAMPOT ranked with the IoU weight chosen on the val split (no blend row when it is 0).
  chosen = json.loads((workdir / "regressor_eval.json").read_text())["model_made"]["iou_weight"]
  assert found["iou_weight"] == chosen
  for key in ("regressor", "iou_head") + (("blend",) if chosen else ()):
    assert np.isfinite(found["score"][key]["pearson_r"])
  table = (workdir / "verdict.md").read_text()
  assert found["sentence"] in table and "| IoU head |" in table
  assert store.config_of(workdir)["data"]["target"] == "lung"


def test_the_verdict_task_repeats_the_verdict_of_training(trained, folder, tmp_path):
  """A regressor judged by the verdict task on the images and settings it was trained with gets
  the verdict of its training run, number for number."""
  config, workdir, _ = trained
  again = verdict_tiny.get_config()
  again.data.dir, again.data.target = str(folder), "lung"
  again.regressor.workdir = str(workdir)
  first = json.loads((workdir / "verdict.json").read_text())
  again.evolve.iou_weight = first["iou_weight"]  # training's verdict ranks with val's choice
  verdict_task.run(again, str(tmp_path / "verdict"))
  found = json.loads((tmp_path / "verdict" / "verdict.json").read_text())
  assert found["dice"] == first["dice"] and found["ids"] == first["ids"]
  assert found["score"]["n"] == first["score"]["n"] > 0
  for key in ("regressor", "iou_head", "blend"):
    assert (found["score"].get(key) or {}).get("pearson_r") == pytest.approx(
        (first["score"].get(key) or {}).get("pearson_r"), abs=1e-6)
  # A regressor of another structure is refused, naming the fix.
  again.data.target = "left"
  with pytest.raises(errors.ModelMismatchError, match="data.target='lung'"):
    verdict_task.run(again, str(tmp_path / "other"))


@pytest.fixture
def tiny_shipped(tmp_path, monkeypatch):
  """train_regressor_tiny's model shipped as 'tiny_lung' in a temporary weights folder."""
  config = train_regressor_tiny.get_config()
  model = regressor.from_config(config.model)
  variables = store.random_variables(model, seed=5)
  made = {"model": config.model.to_dict(), "data": {"target": "lung"},
          "sam_variant": "lite_medsam", "trained": {"command": "test"}}
  shipped.write("tiny_lung", made, variables, "float32", tmp_path / "weights")
  monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path / "weights")
  return config, model, variables


def test_init_from_starts_at_the_shipped_weights(tiny_shipped):
  config, model, variables = tiny_shipped
  config.init_from = "tiny_lung"
  got = tr.initial_variables(config, model)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config.model.resolution = 32
  with pytest.raises(errors.ConfigError, match="model.resolution: 32 here, 64 in tiny_lung"):
    tr.initial_variables(config, model)


def test_a_few_labelled_images_fine_tune_without_a_val_split(tiny_shipped, folder, tmp_path):
  config, _, variables = tiny_shipped
  config.data.dir, config.data.target = str(folder), "lung"
  config.init_from, config.train_images, config.num_epochs = "tiny_lung", 2, 3
  config.patience, config.verdict.images = 1, 0  # patience has no say without a val split
  summary = train_regressor.run(config, str(tmp_path))
  assert summary["num_images"]["train"] == 2 and "val" not in summary["num_images"]
  assert not list((tmp_path / "candidates").glob("val_*"))
  assert summary["epochs_run"] == 3 and summary["best_epoch"] == 3  # the last epoch is kept
  moved = store.load(tmp_path).variables
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(variables)))


def test_settings_added_since_do_not_block_a_resume_at_their_old_value(tmp_path):
  config = train_regressor_tiny.get_config()
  old = resume.settings_that_matter(config)
  for key in resume.ADDED:
    old.pop(key)
  (tmp_path / "1").mkdir()  # a saved step: the settings are compared
  (tmp_path / resume.SETTINGS_FILE).write_text(json.dumps(
      {"format": 1, "num_epochs": config.num_epochs, "settings": old}))
  resume.check_settings(tmp_path, config)
  config.verdict.images = 7  # read after training only
  config.evolve.num_steps = 9
  resume.check_settings(tmp_path, config)
  config.train_images = 3
  with pytest.raises(errors.ResumeError, match="train_images"):
    resume.check_settings(tmp_path, config)
