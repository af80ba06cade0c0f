"""What train_regressor reads back is checked: the trained regressor, the training checkpoints, the
settings a run is resumed with; and what it skipped is recorded."""
import json
import logging
import os
from pathlib import Path
import shutil

import jax
import numpy as np
import pytest

from configs import regressor_paper_tiny
from sampot_jax.data import fake_data
from sampot_jax.data import splits as splits_lib
from sampot_jax.regressor import model as regressor
from sampot_jax.regressor import store
from sampot_jax.regressor import resume
from sampot_jax.regressor import train as tr
from sampot_jax.tasks import train_regressor
from tests.helpers import synthetic_config, synthetic_set
from sampot_jax import errors

def small_config(num_epochs=4):
  config = synthetic_config(num_epochs=num_epochs, checkpoint_every=2)
  config.max_checkpoints = 2
  return config


SETS = (synthetic_set(6, 0), synthetic_set(3, 1))


def assert_states_equal(a, b):
  """Exact equality of two training states, wall-clock times aside."""
  assert a.keys() == b.keys()
  for key in a:
    if key != "seconds":
      jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                   a[key], b[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A 2-epoch run (step 2) and a straight 4-epoch run (steps 2 and 4), trained once."""
  root = tmp_path_factory.mktemp("runs")
  two = tr.train(small_config(num_epochs=2), root / "two", *SETS)
  four = tr.train(small_config(num_epochs=4), root / "four", *SETS)
  return root, two, four


def copy_run(runs, name, tmp_path) -> Path:
  shutil.copytree(runs[0] / name, tmp_path / name)
  return tmp_path / name


def flip_a_bit(path: Path) -> None:
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))


def data_files(directory: Path) -> list[Path]:
  """The array data files of an Orbax checkpoint (under its d/ folders)."""
  return sorted(p for p in directory.rglob("*") if p.is_file() and p.parent.name == "d")


# ---------------------------------------------------------------------------
# The trained regressor.


@pytest.fixture
def regressor_dir(tmp_path):
  config = regressor_paper_tiny.get_config()
  model = regressor.from_config(config.model)
  variables = store.random_variables(model, seed=3)
  store.save(tmp_path, config, variables)
  return tmp_path, variables


def test_regressor_round_trip_is_exact(regressor_dir):
  workdir, variables = regressor_dir
  assert (workdir / "regressor_index.json").is_file()
  loaded = store.load(workdir).variables
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, variables)


def test_regressor_with_a_flipped_bit_is_refused(regressor_dir):
  workdir, _ = regressor_dir
  biggest = max(data_files(workdir / "regressor"), key=lambda p: p.stat().st_size)
  flip_a_bit(biggest)
  with pytest.raises(errors.RegressorError, match=rf"(?s){workdir / 'regressor'}.*Retrain.*restore"):
    store.load(workdir)


def test_regressor_without_its_index_is_refused(regressor_dir):
  workdir, _ = regressor_dir
  (workdir / "regressor_index.json").unlink()
  with pytest.raises(errors.RegressorError, match="regressor_index.json is missing"):
    store.load(workdir)


# ---------------------------------------------------------------------------
# Resuming with other settings.


def test_resume_with_other_settings_is_refused_and_lists_them(runs, tmp_path):
  workdir = copy_run(runs, "two", tmp_path)
  config = small_config(num_epochs=2)
  config.learning_rate = 1e-2
  config.max_images_per_split = 5
  config.data.target = "right"
  config.candidates.n_per_kind = 2
  config.model.features = (4, 4, 8, 8, 16)
  with pytest.raises(errors.ResumeError) as caught:
    tr.train(config, workdir, *SETS)
  message = str(caught.value)
  for line in ("learning_rate: 0.001 -> 0.01", "max_images_per_split: 3 -> 5",
               'data.target: "left" -> "right"', "candidates.n_per_kind: 4 -> 2",
               "model.features: [4, 4, 8, 8, 8] -> [4, 4, 8, 8, 16]"):
    assert line in message, message
  assert "--workdir" in message and f"rm -r {workdir / 'checkpoints'}" in message
  # Through the task: refused before config.json is (re)written or any data is read.
  with pytest.raises(errors.ResumeError, match="learning_rate"):
    train_regressor.run(config, str(workdir))
  assert not (workdir / "config.json").exists()


def test_fewer_epochs_is_refused_by_name(runs, tmp_path):
  workdir = copy_run(runs, "two", tmp_path)
  with pytest.raises(errors.ResumeError, match="num_epochs: 2 -> 1"):
    tr.train(small_config(num_epochs=1), workdir, *SETS)


def test_more_epochs_continue_the_run_as_if_planned(runs, tmp_path):
  workdir = copy_run(runs, "two", tmp_path)
  config = small_config(num_epochs=4)
  config.patience = 7  # harmless changes are allowed
  config.log_every = 3
  config.checkpoint_every = 1
  resumed = tr.train(config, workdir, *SETS)
  assert resumed["train_loss"].shape == (4,)
  assert_states_equal(resumed, runs[2])
  assert json.loads((workdir / "checkpoints" / "settings.json").read_text())["num_epochs"] == 4


def test_harmless_settings_pass_the_check(tmp_path):
  config = small_config()
  (tmp_path / "1").mkdir()  # a saved step
  resume.check_settings(tmp_path, config)  # no settings.json: recorded
  changed = small_config(num_epochs=9)
  for name, value in dict(patience=3, log_every=5, checkpoint_every=3, eval_batch_size=5,
                          max_checkpoints=4, candidates_dir="/elsewhere",
                          sweep_offsets=(0,)).items():
    changed[name] = value
  resume.check_settings(tmp_path, changed)
  changed.seed = 1
  with pytest.raises(errors.ResumeError, match="seed: 0 -> 1"):
    resume.check_settings(tmp_path, changed)


# ---------------------------------------------------------------------------
# Damaged training checkpoints.


def test_truncated_latest_step_falls_back_to_the_previous_one(runs, tmp_path, caplog):
  workdir = copy_run(runs, "four", tmp_path)
  checkpoints = workdir / "checkpoints"
  manifest = checkpoints / "4" / "default" / "manifest.ocdbt"
  os.truncate(manifest, manifest.stat().st_size // 2)
  with caplog.at_level(logging.WARNING):
    resumed = tr.train(small_config(num_epochs=4), workdir, *SETS)
  assert "step 4 was unreadable" in caplog.text and "resuming from step 2" in caplog.text
  # Epochs 3 and 4 were trained again from step 2: the same end as the straight run.
  assert_states_equal(resumed, runs[2])
  assert (checkpoints / "4.unreadable").is_dir()
  assert (checkpoints / "4" / resume.INDEX_FILE).is_file()  # saved again


def test_flipped_bits_in_the_latest_step_are_caught(runs, tmp_path, caplog):
  workdir = copy_run(runs, "four", tmp_path)
  for path in data_files(workdir / "checkpoints" / "4"):
    flip_a_bit(path)
  with caplog.at_level(logging.WARNING):
    resumed = tr.train(small_config(num_epochs=4), workdir, *SETS)
  assert "step 4 was unreadable" in caplog.text
  assert_states_equal(resumed, runs[2])


def test_no_readable_step_is_one_error_listing_each(runs, tmp_path):
  workdir = copy_run(runs, "four", tmp_path)
  for step in ("2", "4"):
    (workdir / "checkpoints" / step / "default" / "manifest.ocdbt").unlink()
  with pytest.raises(errors.ResumeError, match=r"(?s)can be restored:.*step 4: .*step 2: .*rm -r"):
    tr.train(small_config(num_epochs=4), workdir, *SETS)


# ---------------------------------------------------------------------------
# Skipped examples and bad settings.


def test_skipped_bad_examples_are_in_metrics_json(tmp_path):
  root = tmp_path / "raw"
  ids = fake_data.write("folder", root, n=9)
  fake_data.write_splits(root / "splits.csv",
                         [[sid, splits_lib.SPLITS[i % 3], "normal"] for i, sid in enumerate(ids)])
  bad = root / "masks" / "left" / f"{ids[0]}.png"  # ids[0] is in train
  fake_data.write_image(bad, np.zeros((80, 64), np.uint8))
  config = regressor_paper_tiny.get_config()
  config.data.source = "folder"
  config.data.dir = str(root)
  config.data.on_bad_example = "skip"
  config.num_epochs = 1
  config.batch_size = 4
  config.sweep_offsets = (-2, 0, 2)
  train_regressor.run(config, str(tmp_path / "run"))
  skipped = json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_examples"]
  assert skipped["val"] == skipped["test"] == {"count": 0, "examples": []}
  assert skipped["train"]["count"] == 1
  (example,) = skipped["train"]["examples"]
  assert example["file"] == str(bad) and "empty" in example["problem"]


def test_bad_settings_are_named_before_any_work(tmp_path):
  config = small_config()
  config.batch_size = 0
  with pytest.raises(ValueError, match=r"config\.batch_size=0"):
    train_regressor.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
