"""A trained regressor on disk, and the Scorer a run uses.

A train_regressor workdir holds:
  regressor/               the best variables (Orbax)
  regressor_index.json     every array's tree path, shape, dtype and crc32
  regressor_config.json    {'model': model fields, 'data': {'target', 'image_size'}}
Workdirs written before the rename (oracle/, oracle_index.json, oracle_config.json) load as
they are. Regressors shipped inside the package load by name (regressor/shipped.py).

    scorer = store.from_config(config.regressor, expected_target="left")
    scorer(image_small, soft_mask)  # (B,) predicted Dice
"""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging
import ml_collections
import orbax.checkpoint as ocp

from sampot_jax import errors
from sampot_jax.regressor import model as regressor
from sampot_jax.regressor import shipped
from sampot_jax.runtime import settings
from sampot_jax.sam import frozen
from sampot_jax.sampot.scorer import Scorer
from sampot_jax.storage import checkpoints
from sampot_jax.storage import files

VARIABLES_DIR = "regressor"
INDEX_FILE = "regressor_index.json"
CONFIG_FILE = "regressor_config.json"
# The same files under their names before the rename.
_LEGACY = {VARIABLES_DIR: "oracle", INDEX_FILE: "oracle_index.json",
           CONFIG_FILE: "oracle_config.json"}


def _path(workdir: Path, name: str) -> Path:
  """workdir/name, or its legacy name where only that exists."""
  path = workdir / name
  legacy = workdir / _LEGACY[name]
  return legacy if not path.exists() and legacy.exists() else path


def scorer_of(model: regressor.DiceRegressor, variables) -> Scorer:
  """The Scorer of a DiceRegressor and its variables."""
  return Scorer(fn=regressor.make_scorer(model), variables=variables,
                resolution=int(model.resolution), model=model)


def random_variables(model: regressor.DiceRegressor, seed: int = 0) -> dict:
  """Random {'params', 'batch_stats'} for a DiceRegressor (frozen.random_like; no compilation)."""
  shapes = jax.eval_shape(lambda: regressor.init_variables(model, jax.random.key(0)))
  return frozen.random_like(dict(shapes), seed)


def save(workdir: Path, config: ml_collections.ConfigDict, variables: dict) -> None:
  """Best variables to workdir/regressor, their crc32 index, and the model config.

  The index (`checkpoints.array_index`, as a SAM port's params_index.json) is what `load`
  checks the restored arrays against. The old index is removed first, so a save cut short
  leaves no index that vouches for other bytes.
  """
  workdir = Path(workdir).resolve()
  for name in (INDEX_FILE, _LEGACY[INDEX_FILE]):
    (workdir / name).unlink(missing_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(workdir / VARIABLES_DIR, jax.tree.map(jnp.asarray, variables), force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  files.write_json(workdir / INDEX_FILE,
                   {"format": 1, "arrays": checkpoints.array_index(variables)})
  files.write_json(workdir / CONFIG_FILE,
                   {"model": config.model.to_dict(),
                    "data": {"target": config.data.target,
                             "image_size": config.data.image_size},
                    # The SAM whose masks it learned (None: trained on synthetic masks only).
                    "sam_variant": (config.sam.variant if "sam" in config
                                    and config.candidates.model_boxes > 0 else None)})


def config_of(workdir: Path) -> dict:
  """regressor_config.json of a train_regressor workdir: {'model': ..., 'data': {...}}."""
  workdir = Path(workdir).expanduser().resolve()
  config_path = _path(workdir, CONFIG_FILE)
  if not config_path.exists():
    raise errors.MissingCheckpointError(
        f"{workdir / CONFIG_FILE} is missing: no regressor was trained there. Train one: "
        f"python main.py --config configs/train_regressor.py --workdir {workdir}")
  try:
    found = json.loads(config_path.read_text())
    if not isinstance(found, dict) or not isinstance(found.get("model"), dict):
      raise ValueError("not a JSON object with a 'model' object")
  except (ValueError, OSError) as e:
    raise errors.RegressorError(f"{config_path} cannot be read ({e}). {_fix(workdir)}") from None
  return found


def _fix(workdir: Path) -> str:
  return (f"Retrain: run train_regressor again with the same config and --workdir {workdir} "
          "(it resumes from workdir/checkpoints, so a finished run only rewrites the regressor; "
          f"with no checkpoints it trains anew), or restore {workdir} from a backup.")


def load(workdir: Path) -> Scorer:
  """The trained regressor of a train_regressor workdir, checked against its crc32 index.

  Raises:
    errors.MissingCheckpointError: nothing trained there.
    errors.RegressorError: the variables or their index are missing or unreadable, or an
      array's shape, dtype or crc32 differs from the index; the message names the file and
      says to retrain or restore.
  """
  workdir = Path(workdir).expanduser().resolve()
  model = regressor.from_config(config_of(workdir)["model"])
  path, index_path = _path(workdir, VARIABLES_DIR), _path(workdir, INDEX_FILE)

  def fail(problem):
    return errors.RegressorError(
        f"the trained regressor {path} is damaged or incomplete: {problem}. " + _fix(workdir))

  if not index_path.exists():
    raise fail(f"{workdir / INDEX_FILE} is missing (the save was cut short, or the regressor "
               "was written before regressors carried a crc32 index), so its bytes cannot be "
               "checked")
  try:
    index = json.loads(index_path.read_text())["arrays"]
    if not isinstance(index, dict):
      raise ValueError("'arrays' is not a JSON object")
  except (ValueError, KeyError, TypeError, OSError) as e:
    raise fail(f"{index_path} cannot be read ({e})") from None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          jax.eval_shape(lambda: regressor.init_variables(model, jax.random.key(0))))
  checkpointer = ocp.StandardCheckpointer()
  try:
    variables = checkpointer.restore(path, abstract)
  except Exception as e:  # pylint: disable=broad-except  # Orbax/tensorstore raise many types.
    raise fail(f"Orbax cannot restore it ({type(e).__name__}: {str(e)[:300]})") from None
  finally:
    checkpointer.close()
  problem = checkpoints.index_problem(variables, index, str(index_path))
  if problem:
    raise fail(problem)
  return scorer_of(model, dict(variables))


def from_config(block, expected_target: str | None = None,
                sam_variant: str | None = None) -> Scorer:
  """The Scorer a config.regressor block names.

  Fields: `random_init` (bool) with `model` (regressor model fields) and `seed`; else
  `workdir` (a train_regressor workdir) when set; else `name` (a shipped regressor,
  regressor/shipped.py). `expected_target` (the run's config.data.target): a trained regressor
  must have been trained for that target, else ModelMismatchError; `sam_variant` (the run's
  config.sam.variant): a regressor that learned another SAM's masks is refused the same way.
  None skips a check (random regressors have neither).
  """
  block = settings.typed(settings.Regressor, block, "config.regressor")
  if block.random_init:
    model = regressor.from_config(block.model)
    return scorer_of(model, random_variables(model, int(block.seed)))
  if block.workdir:
    if block.name:
      logging.info("config.regressor.workdir=%s is used; config.regressor.name=%s is not.",
                   block.workdir, block.name)
    where = Path(block.workdir).expanduser().resolve()
    made = config_of(where)
    fix_by = "point --config.regressor.workdir at a regressor trained with"
  elif block.name:
    where = f"the shipped regressor {block.name!r}"
    made = shipped.card(block.name)
    fix_by = (f"pick another --config.regressor.name ({', '.join(shipped.names())}) or train "
              "your own (--config.regressor.workdir) with")
  else:
    raise errors.ConfigError(
        "config.regressor names no regressor: set --config.regressor.name to a shipped one "
        f"({', '.join(shipped.names()) or 'none installed'}) or --config.regressor.workdir to "
        "a train_regressor workdir.")
  trained = (made.get("data") or {}).get("target")
  if expected_target is not None and trained != expected_target:
    raise errors.ModelMismatchError(
        f"config.data.target={expected_target!r}, but {where} was trained for "
        f"data.target={trained!r}; it would score masks of the wrong structure. Fix: set "
        f"--config.data.target={trained}, or {fix_by} --config.data.target={expected_target}.")
  learned = made.get("sam_variant")
  if sam_variant is not None and learned is not None and learned != sam_variant:
    raise errors.ModelMismatchError(
        f"config.sam.variant={sam_variant!r}, but {where} learned the masks of {learned!r}; "
        f"its scores would not rank {sam_variant}'s masks. Fix: set "
        f"--config.sam.variant={learned}, or {fix_by} --config.sam.variant={sam_variant}.")
  return load(block.workdir) if block.workdir else scorer_of(*shipped.read(block.name))
