"""runtime.settings: each shared config block is one frozen dataclass, the only source of its
defaults; every config's blocks are valid, and a bad one stops a task before any work."""
import importlib
from pathlib import Path

import pytest

from sampot_jax import errors
from sampot_jax.runtime import settings
from sampot_jax.tasks import common

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py")
                 if p.stem != "__init__")


@pytest.mark.parametrize("cls", list(settings.BLOCKS.values()), ids=list(settings.BLOCKS))
def test_a_block_reads_back_as_its_defaults(cls):
  assert settings.typed(cls, settings.block(cls()), "config.x") == cls()


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_valid_blocks(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  checked = settings.check_blocks(config)
  # The port, prepare and ship tasks share no block.
  assert checked or name in ("port_sam", "prepare_montgomery", "ship_regressor"), name
  for block, value in checked.items():
    assert isinstance(value, settings.BLOCKS[block])


def test_unknown_fields_and_bad_values_are_named():
  with pytest.raises(errors.ConfigError, match=r"config.evolve has unknown field\(s\) \['num_step'\]"):
    settings.typed(settings.Evolve, {"num_step": 3}, "config.evolve")
  with pytest.raises(errors.ConfigError, match=r"config.evolve.iou_weight=1.5; it must be in \[0, 1\]"):
    settings.Evolve(iou_weight=1.5)
  with pytest.raises(errors.ConfigError, match="config.safeguards.rules names \\['score'\\]"):
    settings.Safeguards(rules=("score",))
  with pytest.raises(errors.ConfigError, match="config.data.on_bad_example='ignore'"):
    settings.Data(on_bad_example="ignore")


def test_a_task_checks_its_blocks_before_making_its_workdir(tmp_path):
  from configs import refine_tiny  # pylint: disable=g-import-not-at-top
  config = refine_tiny.get_config()
  config.evolve.slope = -1.0
  with pytest.raises(errors.ConfigError, match="config.evolve.slope=-1.0"):
    common.start(config, tmp_path / "out")
  assert not (tmp_path / "out").exists()
