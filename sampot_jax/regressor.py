"""The segmentation regressor: (image, soft mask) -> predicted Dice in [0, 1].

Paper, section 3.2: five 2-D convolutions interleaved with BatchNorm and leaky
ReLU, sigmoid output. A linear readout maps the last feature map to one logit.

Input convention (the same for `DiceRegressor.__call__` and `score`):
  image: float32 in [0, 1] (uint8 / 255), shape (B, S, S) or (B, S, S, 1).
  mask:  float32 in [0, 1] (hard 0/1 or soft, e.g. sigmoid(slope * logits)),
         same shape as the image; S may differ from the model's `resolution`,
         both are resized inside (bilinear, antialiased) to it.
  output: float32 (B,), the predicted Dice of the mask against the unseen
          ground truth.

A trained regressor (the SAMPOT oracle) lives in a train_regressor workdir:
`save_oracle` / `load_oracle` (workdir/oracle, checked against the crc32 index
workdir/oracle_index.json; workdir/oracle_config.json says which model and target).
"""
import functools
import json
from pathlib import Path
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from sampot_jax import checkpoints
from sampot_jax import files
from sampot_jax import settings

Variables = dict


def _as_nhwc(x: jax.Array, name: str) -> jax.Array:
  """(B, S, S) or (B, S, S, 1) -> (B, S, S, 1) float32."""
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] != 1:
    raise ValueError(
        f"{name} has shape {x.shape}; expected (B, S, S) or (B, S, S, 1). "
        "Add a batch axis for a single example.")
  return x.astype(jnp.float32)


def prepare_inputs(image: jax.Array, mask: jax.Array,
                   resolution: int) -> jax.Array:
  """Stacks image and mask as channels at `resolution`.

  Args:
    image: (B, S, S[, 1]) float in [0, 1].
    mask: (B, S', S'[, 1]) float in [0, 1]; S' may differ from S.
    resolution: side length R the network runs at.

  Returns:
    (B, R, R, 2) float32: image, mask.
  """
  image = _as_nhwc(image, "image")
  mask = _as_nhwc(mask, "mask")
  if image.shape[0] != mask.shape[0]:
    raise ValueError(f"image batch {image.shape[0]} != mask batch "
                     f"{mask.shape[0]}; pass one mask per image.")
  for name, x in (("image", image), ("mask", mask)):
    if x.shape[1] != x.shape[2]:
      raise ValueError(f"{name} is {x.shape[1]}x{x.shape[2]}; expected a "
                       "square frame (pad or resize it first).")
  shape = (image.shape[0], resolution, resolution, 1)
  # Resizing is differentiable, so SAM's 256x256 low-res frame can be scored
  # and back-propagated through at any model resolution.
  if image.shape != shape:
    image = jax.image.resize(image, shape, "linear")
  if mask.shape != shape:
    mask = jax.image.resize(mask, shape, "linear")
  return jnp.concatenate([image, mask], axis=-1)


def coordinate_channels(batch: int, resolution: int) -> jax.Array:
  """(B, R, R, 2) float32: x and y in [-1, 1] (CoordConv)."""
  axis = jnp.linspace(-1.0, 1.0, resolution, dtype=jnp.float32)
  y, x = jnp.meshgrid(axis, axis, indexing="ij")
  coords = jnp.stack([x, y], axis=-1)
  return jnp.broadcast_to(coords, (batch, resolution, resolution, 2))


class DiceRegressor(nn.Module):
  """Five conv + BatchNorm + leaky ReLU blocks, linear readout, sigmoid.

  Attributes:
    features: output channels of the five convolutions.
    strides: stride of each convolution.
    kernel_size: side of the convolution kernels, one int for all or one per
      convolution.
    resolution: side R at which the network sees image and mask.
    coord_channels: append x/y coordinate channels (CoordConv) so that the
      position of the mask (left vs right lung, outside the body) is visible.
    readout: 'flatten' (Dense over the whole last feature map, keeps
      position) or 'mean' (global average pool, then Dense).
    negative_slope: slope of the leaky ReLU for negative inputs.
    bn_momentum: BatchNorm running-average momentum.
  """
  features: Sequence[int] = (16, 32, 64, 64, 64)
  strides: Sequence[int] = (2, 2, 2, 2, 2)
  kernel_size: int | Sequence[int] = 3
  resolution: int = 256
  coord_channels: bool = False
  readout: str = "flatten"
  negative_slope: float = 0.01
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, image: jax.Array, mask: jax.Array,
               train: bool = False) -> jax.Array:
    """Predicted Dice.

    Args:
      image: (B, S, S[, 1]) float32 in [0, 1].
      mask: (B, S', S'[, 1]) float32 in [0, 1], hard or soft.
      train: batch statistics (True) or running averages (False) in BN.

    Returns:
      (B,) float32 in [0, 1].
    """
    if len(self.features) != len(self.strides):
      raise ValueError(f"features {tuple(self.features)} and strides "
                       f"{tuple(self.strides)} differ in length; give one "
                       "stride per convolution.")
    kernel_sizes = self.kernel_size
    if isinstance(kernel_sizes, int):
      kernel_sizes = (kernel_sizes,) * len(self.features)
    if len(kernel_sizes) != len(self.features):
      raise ValueError(f"kernel_size {tuple(kernel_sizes)} gives "
                       f"{len(kernel_sizes)} sizes for {len(self.features)} "
                       "convolutions; give one int or one size per conv.")
    x = prepare_inputs(image, mask, self.resolution)
    if self.coord_channels:
      x = jnp.concatenate(
          [x, coordinate_channels(x.shape[0], self.resolution)], axis=-1)
    for features, stride, k in zip(self.features, self.strides, kernel_sizes):
      x = nn.Conv(features, (k, k),
                  strides=(stride, stride), padding="SAME", use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train,
                       momentum=self.bn_momentum)(x)
      x = nn.leaky_relu(x, self.negative_slope)
    if self.readout == "flatten":
      x = x.reshape(x.shape[0], -1)
    elif self.readout == "mean":
      x = x.mean(axis=(1, 2))
    else:
      raise ValueError(f"readout={self.readout!r}; use 'flatten' or 'mean'.")
    logit = nn.Dense(1)(x)[:, 0]
    return nn.sigmoid(logit)


def from_config(model_config) -> DiceRegressor:
  """Builds the model from a config.model ConfigDict (or plain dict)."""
  return settings.typed(DiceRegressor, model_config, "config.model")


def init_variables(model: DiceRegressor, rng: jax.Array) -> Variables:
  """{'params', 'batch_stats'} for a model, from a PRNG key."""
  dummy = jnp.zeros((1, model.resolution, model.resolution), jnp.float32)
  return dict(model.init(rng, dummy, dummy, train=False))


def score(variables: Variables, image: jax.Array, soft_mask: jax.Array, *,
          model: DiceRegressor) -> jax.Array:
  """Predicted Dice in eval mode (batch statistics frozen); pure.

  Safe under jit / vmap / grad: differentiable w.r.t. `soft_mask` (and the
  image). `model` is keyword-only and required because the variables alone
  do not say which architecture they belong to; `make_scorer` binds it.

  Args:
    variables: {'params', 'batch_stats'} of `model`.
    image: (B, S, S[, 1]) float32 in [0, 1].
    soft_mask: (B, S', S'[, 1]) float32 in [0, 1].
    model: the DiceRegressor the variables were trained for.

  Returns:
    (B,) float32 in [0, 1].
  """
  return model.apply(variables, image, soft_mask, train=False)


def make_scorer(
    model: DiceRegressor) -> Callable[[Variables, jax.Array, jax.Array],
                                      jax.Array]:
  """`score` with the model bound: score_fn(variables, image, soft_mask)."""
  return functools.partial(score, model=model)


ORACLE_DIR = "oracle"
ORACLE_INDEX = "oracle_index.json"
ORACLE_CONFIG = "oracle_config.json"


class OracleError(ValueError):
  """A trained regressor in a workdir that is incomplete, damaged or does not fit."""


def save_oracle(workdir: Path, config: ml_collections.ConfigDict,
                variables: dict) -> None:
  """Best variables to workdir/oracle, their crc32 index, and the model config.

  workdir/oracle_index.json holds every array's tree path, shape, dtype and
  crc32 (`checkpoints.array_index`, as a SAM port's params_index.json);
  `load_oracle` checks the restored arrays against it. The old index is removed
  first, so a save cut short leaves no index that vouches for other bytes.
  """
  workdir = Path(workdir).resolve()
  index_path = workdir / ORACLE_INDEX
  index_path.unlink(missing_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(workdir / ORACLE_DIR, jax.tree.map(jnp.asarray, variables), force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  files.write_json(index_path, {"format": 1, "arrays": checkpoints.array_index(variables)})
  files.write_json(workdir / ORACLE_CONFIG,
             {"model": config.model.to_dict(),
              "data": {"target": config.data.target,
                       "image_size": config.data.image_size}})


def oracle_config(workdir: Path) -> dict:
  """oracle_config.json of a train_regressor workdir: {'model': ..., 'data': {'target', ...}}."""
  workdir = Path(workdir).resolve()
  config_path = workdir / ORACLE_CONFIG
  if not config_path.exists():
    raise FileNotFoundError(
        f"{config_path} is missing; train first: python main.py --config "
        f"configs/train_regressor.py --workdir {workdir}")
  try:
    found = json.loads(config_path.read_text())
    if not isinstance(found, dict) or not isinstance(found.get("model"), dict):
      raise ValueError("not a JSON object with a 'model' object")
  except (ValueError, OSError) as e:
    raise OracleError(f"{config_path} cannot be read ({e}). {_oracle_fix(workdir)}") from None
  return found


def _oracle_fix(workdir: Path) -> str:
  return (f"Retrain: run train_regressor again with the same config and --workdir {workdir} "
          "(it resumes from workdir/checkpoints, so a finished run only rewrites the oracle; "
          f"with no checkpoints it trains anew), or restore {workdir} from a backup.")


def load_oracle(workdir: Path) -> tuple[Callable, dict]:
  """The trained oracle of a train_regressor workdir, checked against oracle_index.json.

  Returns:
    (score_fn, variables): score_fn(variables, image, soft_mask) -> (B,), see
    `regressor.score` for the input convention.

  Raises:
    FileNotFoundError: no oracle_config.json (nothing trained there).
    OracleError: the oracle or its index is missing, unreadable, or an array's
      shape, dtype or crc32 differs from the index; the message names the file
      and says to retrain or restore.
  """
  workdir = Path(workdir).resolve()
  model = from_config(oracle_config(workdir)["model"])
  path, index_path = workdir / ORACLE_DIR, workdir / ORACLE_INDEX

  def fail(problem):
    return OracleError(f"the trained regressor {path} is damaged or incomplete: {problem}. "
                       + _oracle_fix(workdir))

  if not index_path.exists():
    raise fail(f"{index_path} is missing (the save was cut short, or the oracle was "
               "written before oracles carried a crc32 index), so its bytes cannot be checked")
  try:
    index = json.loads(index_path.read_text())["arrays"]
    if not isinstance(index, dict):
      raise ValueError("'arrays' is not a JSON object")
  except (ValueError, KeyError, TypeError, OSError) as e:
    raise fail(f"{index_path} cannot be read ({e})") from None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))
  checkpointer = ocp.StandardCheckpointer()
  try:
    variables = checkpointer.restore(path, abstract)
  except Exception as e:  # Orbax/tensorstore raise many types for bad files.
    raise fail(f"Orbax cannot restore it ({type(e).__name__}: {str(e)[:300]})") from None
  finally:
    checkpointer.close()
  problem = checkpoints.index_problem(variables, index, str(index_path))
  if problem:
    raise fail(problem)
  return make_scorer(model), dict(variables)
