"""Shipped regressors (regressor/shipped.py): written, read back, checked by hash, chosen by
name; and the ones in the package load and score as their cards say."""
import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import regressor_paper_tiny
from sampot_jax import errors
from sampot_jax.regressor import model as regressor
from sampot_jax.regressor import shipped
from sampot_jax.regressor import store


@pytest.fixture
def tiny(tmp_path):
  """A random tiny regressor written as 'tiny_left' (float32) and 'tiny_half' (float16)."""
  config = regressor_paper_tiny.get_config()
  model = regressor.from_config(config.model)
  variables = store.random_variables(model, seed=3)
  made = {"model": config.model.to_dict(), "data": {"target": "left", "image_size": 64},
          "sam_variant": "lite_medsam", "trained": {"command": "python main.py ..."}}
  shipped.write("tiny_left", made, variables, "float32", tmp_path)
  shipped.write("tiny_half", made, variables, "float16", tmp_path)
  return tmp_path, model, variables


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_written_and_read_back(tiny):
  folder, model, variables = tiny
  assert shipped.names(folder) == ["tiny_half", "tiny_left"]
  read_model, read = shipped.read("tiny_left", folder)
  assert read_model == model
  for a, b in zip(_leaves(read), _leaves(variables)):
    np.testing.assert_array_equal(a, b)
  _, half = shipped.read("tiny_half", folder)
  for a, b in zip(_leaves(half), _leaves(variables)):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b.astype(np.float16).astype(np.float32))
  assert not list(folder.glob(".*tmp"))  # temporary files renamed


def test_a_changed_file_is_refused_naming_it_and_the_fix(tiny):
  folder, _, _ = tiny
  npz = folder / "tiny_left.npz"
  data = bytearray(npz.read_bytes())
  data[len(data) // 2] ^= 1
  npz.write_bytes(bytes(data))
  with pytest.raises(errors.RegressorError,
                     match=r"tiny_left.npz does not match the sha256 in tiny_left.json.*reinstall"):
    shipped.read("tiny_left", folder)
  npz.unlink()
  with pytest.raises(errors.RegressorError, match="tiny_left.npz is missing"):
    shipped.read("tiny_left", folder)


def test_an_unknown_name_lists_the_shipped_ones(tiny):
  folder, _, _ = tiny
  with pytest.raises(errors.MissingCheckpointError,
                     match=r"name='lung'.*shipped: tiny_half, tiny_left.*--config.regressor.workdir"):
    shipped.card("lung", folder)


def block(**fields):
  return ml_collections.ConfigDict({"name": "", "workdir": "", "random_init": False, **fields})


def test_chosen_by_name_checked_for_target_and_sam(tiny, monkeypatch, tmp_path):
  folder, _, variables = tiny
  monkeypatch.setattr(shipped, "WEIGHTS_DIR", folder)
  scorer = store.from_config(block(name="tiny_left"), expected_target="left",
                             sam_variant="lite_medsam")
  for a, b in zip(_leaves(scorer.variables), _leaves(variables)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(errors.ModelMismatchError,
                     match=r"(?s)target='right'.*'tiny_left' was trained for data.target='left'"):
    store.from_config(block(name="tiny_left"), expected_target="right")
  with pytest.raises(errors.ModelMismatchError,
                     match=r"(?s)variant='vit_b'.*learned the masks of 'lite_medsam'"):
    store.from_config(block(name="tiny_left"), sam_variant="vit_b")
  with pytest.raises(errors.ConfigError, match=r"names no regressor.*tiny_half, tiny_left"):
    store.from_config(block())
  # A workdir, when given, is used instead of the name.
  config = regressor_paper_tiny.get_config()
  other = store.random_variables(regressor.from_config(config.model), seed=9)
  store.save(tmp_path / "mine", config, other)
  scorer = store.from_config(block(name="tiny_left", workdir=str(tmp_path / "mine")))
  for a, b in zip(_leaves(scorer.variables), _leaves(other)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", shipped.names())
def test_the_package_regressors_load_and_match_their_cards(name):
  card = shipped.card(name)
  assert card["sam_variant"] == "lite_medsam" and card["data"]["target"] in name
  model, variables = shipped.read(name)
  assert model.resolution == card["model"]["resolution"]
  size = (shipped.WEIGHTS_DIR / f"{name}.npz").stat().st_size
  assert size < 2 * 2**20, size  # nothing over 2 MiB in the repository
  check = card["trained"]["float16_vs_float32"]
  assert card["dtype"] == "float32" or check["max_abs_diff"] <= 0.003
  assert card["trained"]["command"].startswith("python main.py")
  json.dumps(card)  # plain JSON


def test_the_two_lung_regressors_ship():
  assert {"lite_medsam_lung_left", "lite_medsam_lung_right"} <= set(shipped.names())
