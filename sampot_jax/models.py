"""The two frozen models of a SAMPOT run, from a config: SAM and the Dice regressor.

    sam_params, sam_config, sam_key = sam_from_config(config.sam)
    score_fn, score_variables = scorer_from_config(config.regressor)

Real runs read a ported SAM checkpoint and a trained regressor; when the SAM
checkpoint is missing they stop with the commands that fetch and port it. Smoke
runs and tests draw random models (`random_init=True`) in numpy without compiling
anything (flax's init compiles every op, or one big program: a minute on a small
CPU even for a tiny SAM).
"""
import hashlib
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from sampot_jax import regressor
from sampot_jax.sam import model as sam_model


class MissingCheckpointError(FileNotFoundError):
  """The SAM checkpoint directory a config names does not exist."""


class ModelMismatchError(ValueError):
  """A saved model is not the one the config asks for (SAM variant, regressor target)."""


def how_to_port(directory, variant: str = "vit_b") -> str:
  """The commands that fetch the official checkpoint and port it to `directory`."""
  from sampot_jax import checkpoints  # pylint: disable=g-import-not-at-top
  name = checkpoints.SAM_CHECKPOINTS.get(variant, checkpoints.SAM_CHECKPOINTS["vit_b"])[0]
  return (f"fetch and port the official SAM {variant} checkpoint, then run again:\n"
          f"  python main.py --config configs/port_sam.py --config.variant={variant} "
          f"--config.out={directory}\n"
          f"(downloads {name} from the official URL into the cache when online), or with the "
          f"file at hand:\n"
          f"  python -m ports.sam --checkpoint {name} --out {directory} --variant {variant}")


def random_like(shapes, seed: int = 0):
  """Random float32 arrays for a pytree of ShapeDtypeStructs, drawn in numpy by leaf name.

  Kernels are LeCun-normal, embeddings and SAM's Fourier matrix standard
  normal, norm scales and BatchNorm variances one, SAM's position embedding
  small noise (so that positions differ), everything else (biases, means,
  relative positions) zero.
  """
  rng = np.random.default_rng(seed)

  def draw(path, shape_dtype):
    name = getattr(path[-1], "key", str(path[-1]))
    shape = shape_dtype.shape
    if name == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      return rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)
    if name in ("embedding", "positional_encoding_gaussian_matrix"):
      return rng.normal(0.0, 1.0, shape).astype(np.float32)
    if name == "pos_embed":
      return rng.normal(0.0, 0.02, shape).astype(np.float32)
    if name in ("scale", "weight", "var", "running_var"):
      return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def random_sam_params(config, seed: int = 0) -> dict:
  """Random SAM params for `config` (random_like; no compilation)."""
  return random_like(sam_model.param_shapes(config), seed)


def random_regressor_variables(model: regressor.DiceRegressor, seed: int = 0) -> dict:
  """Random {'params', 'batch_stats'} for a DiceRegressor (random_like; no compilation)."""
  shapes = jax.eval_shape(lambda: regressor.init_variables(model, jax.random.key(0)))
  return random_like(dict(shapes), seed)


def params_key(params) -> str:
  """sha256 (hex) of a params pytree's paths, shapes, dtypes and bytes."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.shape}:{leaf.dtype}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def _port_variant(directory: Path):
  """The SAM variant a port's manifest.json names, or None where it cannot be read."""
  try:
    return json.loads((directory / "manifest.json").read_text())["sam_config"]["variant"]
  except (OSError, ValueError, KeyError, TypeError):
    return None  # load_ported reports what is wrong with the directory.


def _check_variant(wanted, found, directory) -> None:
  if wanted and found is not None and found != wanted:
    raise ModelMismatchError(
        f"config.sam.variant={wanted!r}, but the port at {directory} is {found!r}. "
        f"Fix: set --config.sam.variant={found} to use that port, or point "
        f"--config.sam.checkpoint_dir at a {wanted} port (make one: python main.py "
        f"--config configs/port_sam.py --config.variant={wanted} "
        f"--config.out=checkpoints/sam_{wanted}).")


def sam_from_config(sam_config_block) -> tuple[dict, ml_collections.ConfigDict, str]:
  """SAM from a config.sam block -> (params, sam config, checkpoint key).

  Fields: `random_init` (bool), `variant`, `overrides` (dict of sam_config
  fields, random models only), `seed`, `checkpoint_dir` (a ports.sam output),
  `fetch_if_missing` (fetch and port the official checkpoint into checkpoint_dir
  instead of stopping with the commands that do it).
  The key identifies the weights (the official file's sha256 for ported
  checkpoints, a hash of the params for random ones); the embedding cache uses it.
  A port of another variant than `variant` is a ModelMismatchError naming both.
  """
  c = sam_config_block
  if c.random_init:
    config = sam_model.sam_config(c.variant, **dict(c.get("overrides", {}) or {}))
    params = random_sam_params(config, int(c.get("seed", 0)))
    return params, config, "random-" + params_key(params)[:16]
  directory = Path(c.checkpoint_dir).expanduser()
  if c.get("fetch_if_missing") and c.checkpoint_dir:
    # Fetches the official file into the cache and ports it into the directory once.
    from ports import sam as port_sam  # pylint: disable=g-import-not-at-top
    from sampot_jax import checkpoints  # pylint: disable=g-import-not-at-top
    try:
      params, config = port_sam.fetch_and_port(directory, c.variant)
    except checkpoints.DownloadError as e:
      raise MissingCheckpointError(
          f"No ported SAM checkpoint at config.sam.checkpoint_dir={str(c.checkpoint_dir)!r}, and "
          f"the official file could not be fetched:\n{e}\nOr "
          + how_to_port(c.checkpoint_dir, c.variant)) from e
  elif not c.checkpoint_dir or not directory.is_dir():
    raise MissingCheckpointError(
        f"No ported SAM checkpoint at config.sam.checkpoint_dir={str(c.checkpoint_dir)!r}; "
        + how_to_port(c.checkpoint_dir or "checkpoints/sam_vit_b", c.variant)
        + "\n(or let the run do both: --config.sam.fetch_if_missing=True)")
  else:
    _check_variant(c.variant, _port_variant(directory), directory)  # before reading the weights
    params, config = sam_model.load_ported(directory)
  _check_variant(c.variant, config.variant, directory)
  manifest = json.loads((directory / "manifest.json").read_text())
  key = manifest.get("source_sha256") or params_key(params)
  return params, config, f"{config.variant}-{key[:16]}"


def scorer_from_config(regressor_config_block, expected_target: str | None = None):
  """The regressor from a config.regressor block -> (score_fn, variables).

  Fields: `random_init` (bool) with `model` (regressor model fields) and
  `seed`, or `workdir` (a train_regressor workdir, see regressor.load_oracle).
  `expected_target` (the run's config.data.target): a trained regressor must have
  been trained for that target (its oracle_config.json says which), else
  ModelMismatchError; None skips the check (random regressors have no target).
  """
  c = regressor_config_block
  if c.random_init:
    model = regressor.from_config(c.model)
    return regressor.make_scorer(model), random_regressor_variables(model, int(c.get("seed", 0)))
  if expected_target is not None:
    workdir = Path(c.workdir).expanduser().resolve()
    trained = (regressor.oracle_config(workdir).get("data") or {}).get("target")
    if trained != expected_target:
      raise ModelMismatchError(
          f"config.data.target={expected_target!r}, but the regressor at {workdir} was trained "
          f"for data.target={trained!r} (its {regressor.ORACLE_CONFIG}); it would score masks "
          f"of the wrong structure. Fix: set --config.data.target={trained}, or point "
          f"--config.regressor.workdir at a regressor trained with "
          f"--config.data.target={expected_target}.")
  return regressor.load_oracle(c.workdir)
