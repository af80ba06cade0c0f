"""Layers shared by SAM's encoders and decoder (the official `modeling/common.py`)."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def layer_norm(epsilon: float, dtype: Dtype | None = None, name: str | None = None) -> nn.LayerNorm:
  # Two-pass variance, as torch computes it; the fast E[x^2]-E[x]^2 form costs parity.
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=dtype, name=name)


class LayerNorm2d(nn.Module):
  """LayerNorm over channels of an NHWC map (torch's LayerNorm2d, which is NCHW)."""
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    weight = self.param("weight", nn.initializers.ones, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # statistics never in bfloat16
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) / jnp.sqrt(var + self.epsilon)
    return (y * weight + bias).astype(x.dtype)


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU in torch's form x/2 (1 + erf(x/sqrt 2)); XLA's erf is a short polynomial,
  cheaper than the erfc that jax.nn.gelu(approximate=False) evaluates."""
  return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(2**-0.5, x.dtype)))


class MLPBlock(nn.Module):
  """lin1 -> activation -> lin2 (torch's MLPBlock; GELU is the exact erf form)."""
  mlp_dim: int
  activation: str = "gelu"
  dtype: Dtype | None = None  # None: the inputs' dtype

  @nn.compact
  def __call__(self, x):
    act = {"gelu": gelu, "relu": jax.nn.relu}[self.activation]
    y = act(nn.Dense(self.mlp_dim, dtype=self.dtype, name="lin1")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="lin2")(y)
