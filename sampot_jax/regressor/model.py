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

A trained regressor is saved and loaded by regressor.store.
"""
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sampot_jax import errors
from sampot_jax.runtime import settings

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
      raise errors.ConfigError(f"features {tuple(self.features)} and strides "
                       f"{tuple(self.strides)} differ in length; give one "
                       "stride per convolution.")
    kernel_sizes = self.kernel_size
    if isinstance(kernel_sizes, int):
      kernel_sizes = (kernel_sizes,) * len(self.features)
    if len(kernel_sizes) != len(self.features):
      raise errors.ConfigError(f"kernel_size {tuple(kernel_sizes)} gives "
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
      raise errors.ConfigError(f"readout={self.readout!r}; use 'flatten' or 'mean'.")
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
