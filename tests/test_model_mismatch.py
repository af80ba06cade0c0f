"""A saved model that is not the one the config asks for is an error naming both."""
import ml_collections
import pytest

from configs import regressor_paper_tiny
from sampot_jax import errors
from sampot_jax.regressor import model as regressor
from sampot_jax.regressor import store
from sampot_jax.sam import frozen
from sampot_jax.sam import model as sam_model
from sampot_jax.storage import checkpoints

TINY = dict(img_size=32, embed_dim=16, depth=1, num_heads=1, global_attn_indexes=(0,),
            window_size=2, prompt_embed_dim=16, transformer_mlp_dim=16, iou_head_hidden_dim=16,
            transformer_depth=1, transformer_heads=1, iou_head_depth=1)


@pytest.fixture
def vit_b_port(tmp_path):
  config = sam_model.sam_config("vit_b", **TINY)
  directory = tmp_path / "sam_vit_b"
  checkpoints.save_params(frozen.random_sam_params(config), directory,
                          {"variant": "vit_b", "sam_config": config.to_dict()})
  return directory


def sam_block(directory, variant):
  return ml_collections.ConfigDict(dict(random_init=False, variant=variant,
                                        checkpoint_dir=str(directory), fetch_if_missing=False))


def test_sam_variant_other_than_the_port_is_refused(vit_b_port):
  with pytest.raises(errors.ModelMismatchError,
                     match=rf"(?s)variant='vit_h'.*{vit_b_port} is 'vit_b'.*"
                           r"--config.sam.variant=vit_b.*a vit_h port"):
    frozen.from_config(sam_block(vit_b_port, "vit_h"))
  sam = frozen.from_config(sam_block(vit_b_port, "vit_b"))
  assert sam.config.variant == "vit_b" and sam.key.startswith("vit_b-")


@pytest.fixture
def left_regressor(tmp_path):
  config = regressor_paper_tiny.get_config()
  assert config.data.target == "left"
  model = regressor.from_config(config.model)
  store.save(tmp_path, config, store.random_variables(model))
  return ml_collections.ConfigDict(dict(random_init=False, workdir=str(tmp_path)))


def test_regressor_trained_for_another_target_is_refused(left_regressor):
  with pytest.raises(errors.ModelMismatchError,
                     match=r"(?s)target='right'.*trained for data.target='left'.*"
                           r"--config.data.target=left"):
    store.from_config(left_regressor, expected_target="right")
  scorer = store.from_config(left_regressor, expected_target="left")
  assert set(scorer.variables) == {"params", "batch_stats"}
