"""A frozen SAM as one value (params, config, weights key, decoder), from a config block.

    sam = frozen.from_config(config.sam)       # random, a ported folder, or fetched and ported
    emb, frame = predictor.encode_images(sam.params, images, sam.config)

Real runs read a ported checkpoint (ports.sam / configs/port_sam.py); when it is missing they
stop with the commands that fetch and port it, or fetch it themselves (`fetch_if_missing`).
Smoke runs and tests draw random weights in numpy without compiling anything (flax's init
compiles every op: a minute on a small CPU even for a tiny SAM).
"""
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from sampot_jax import errors
from sampot_jax.runtime import settings
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor


@dataclasses.dataclass(frozen=True)
class Sam:
  """A frozen promptable segmenter.

  Attributes:
    params: the weights pytree (float32).
    config: its sam_model.sam_config (must match params).
    key: identifies the weights (the source file's sha256 for ports, a hash of the params
      for random ones); the embedding cache is keyed by it.
    decode: decode(params, embeddings, prompts, frame, config, ...) -> (low-res logits,
      IoU), predictor.decode_prompts' signature; another segmenter plugs in here (the
      paper's plug-and-play claim; tests use an analytic one).
  """
  params: Any
  config: ml_collections.ConfigDict
  key: str = ""
  decode: Callable = predictor.decode_prompts


def how_to_port(directory, variant: str = "vit_b") -> str:
  """The commands that fetch the official checkpoint and port it to `directory`."""
  from sampot_jax.storage import checkpoints  # pylint: disable=g-import-not-at-top
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
    raise errors.ModelMismatchError(
        f"config.sam.variant={wanted!r}, but the port at {directory} is {found!r}. "
        f"Fix: set --config.sam.variant={found} to use that port, or point "
        f"--config.sam.checkpoint_dir at a {wanted} port (make one: python main.py "
        f"--config configs/port_sam.py --config.variant={wanted} "
        f"--config.out=checkpoints/sam_{wanted}).")


def from_config(sam_config_block) -> Sam:
  """The Sam a config.sam block names.

  Fields: `random_init` (bool), `variant`, `overrides` (dict of sam_config
  fields, random models only), `seed`, `checkpoint_dir` (a ports.sam output),
  `fetch_if_missing` (fetch and port the official checkpoint into checkpoint_dir
  instead of stopping with the commands that do it).
  The key identifies the weights (the official file's sha256 for ported
  checkpoints, a hash of the params for random ones); the embedding cache uses it.
  A port of another variant than `variant` is a ModelMismatchError naming both.
  """
  c = settings.typed(settings.Sam, sam_config_block, "config.sam")
  if c.random_init:
    config = sam_model.sam_config(c.variant, **dict(c.overrides or {}))
    params = random_sam_params(config, int(c.seed))
    return Sam(params, config, "random-" + params_key(params)[:16])
  directory = Path(c.checkpoint_dir).expanduser()
  if c.fetch_if_missing and c.checkpoint_dir:
    # Fetches the official file into the cache and ports it into the directory once.
    from sampot_jax.sam.port import convert  # pylint: disable=g-import-not-at-top
    try:
      params, config = convert.fetch_and_port(directory, c.variant)
    except errors.DownloadError as e:
      raise errors.MissingCheckpointError(
          f"No ported SAM checkpoint at config.sam.checkpoint_dir={str(c.checkpoint_dir)!r}, and "
          f"the official file could not be fetched:\n{e}\nOr "
          + how_to_port(c.checkpoint_dir, c.variant)) from e
  elif not c.checkpoint_dir or not directory.is_dir():
    raise errors.MissingCheckpointError(
        f"No ported SAM checkpoint at config.sam.checkpoint_dir={str(c.checkpoint_dir)!r}; "
        + how_to_port(c.checkpoint_dir or "checkpoints/sam_vit_b", c.variant)
        + "\n(or let the run do both: --config.sam.fetch_if_missing=True)")
  else:
    _check_variant(c.variant, _port_variant(directory), directory)  # before reading the weights
    params, config = sam_model.load_ported(directory)
  _check_variant(c.variant, config.variant, directory)
  manifest = json.loads((directory / "manifest.json").read_text())
  key = manifest.get("source_sha256") or params_key(params)
  return Sam(params, config, f"{config.variant}-{key[:16]}")


