"""SAM's image encoder: a ViT with windowed and global attention and a conv neck.

Module and parameter names mirror the official PyTorch state_dict
(`image_encoder.blocks.3.attn.qkv.weight` <-> `image_encoder/blocks_3/attn/qkv/kernel`),
so the port in `ports/sam.py` is a table of renames and transposes.
"""
from typing import Any, Sequence

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


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
  """(B,H,W,C) -> (B*nh*nw, window, window, C), zero-padding H and W up to a multiple of window."""
  b, h, w, c = x.shape
  pad_h, pad_w = -h % window, -w % window
  if pad_h or pad_w:
    # The official code pads after norm1 with zeros and lets those tokens take part in attention.
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  hp, wp = h + pad_h, w + pad_w
  x = x.reshape(b, hp // window, window, wp // window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)
  return x, (hp, wp)


def window_unpartition(windows: jax.Array, window: int, padded_hw: tuple[int, int],
                       hw: tuple[int, int]) -> jax.Array:
  """Inverse of `window_partition`: (B*nh*nw, window, window, C) -> (B,H,W,C)."""
  hp, wp = padded_hw
  h, w = hw
  c = windows.shape[-1]
  b = windows.shape[0] // ((hp // window) * (wp // window))
  x = windows.reshape(b, hp // window, wp // window, window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
  return x[:, :h, :w, :]


def relative_position_table(rel_pos: jax.Array, q_size: int, k_size: int) -> jax.Array:
  """(2*max(q,k)-1, C) learned table -> (q_size, k_size, C) embeddings of q-k offsets."""
  if rel_pos.shape[0] != 2 * max(q_size, k_size) - 1:
    raise ValueError(
        f"relative position table has {rel_pos.shape[0]} rows, expected {2 * max(q_size, k_size) - 1} "
        f"for a {q_size}x{k_size} attention grid; the encoder's img_size/patch_size/window_size do not "
        "match the checkpoint's")
  q_coords = jnp.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
  k_coords = jnp.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
  index = (q_coords - k_coords + (k_size - 1) * max(q_size / k_size, 1.0)).astype(jnp.int32)
  return rel_pos[index]


class Attention(nn.Module):
  """Multi-head self-attention over a (B,H,W,C) grid with decomposed relative position bias."""
  num_heads: int
  input_size: tuple[int, int]
  qkv_bias: bool = True
  use_rel_pos: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, h * w, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, HW, heads, hd)
    logits = jnp.einsum("bqnd,bknd->bnqk", q * head_dim**-0.5, k).astype(jnp.float32)
    if self.use_rel_pos:
      rel_h = self.param("rel_pos_h", nn.initializers.zeros, (2 * self.input_size[0] - 1, head_dim))
      rel_w = self.param("rel_pos_w", nn.initializers.zeros, (2 * self.input_size[1] - 1, head_dim))
      table_h = relative_position_table(rel_h, h, h).astype(self.dtype)  # (h, h, hd)
      table_w = relative_position_table(rel_w, w, w).astype(self.dtype)  # (w, w, hd)
      q_grid = q.reshape(b, h, w, self.num_heads, head_dim)
      # Decomposed bias: a height term and a width term, added to the (qh,qw,kh,kw) logits.
      bias_h = jnp.einsum("bhwnc,hkc->bnhwk", q_grid, table_h).astype(jnp.float32)
      bias_w = jnp.einsum("bhwnc,wkc->bnhwk", q_grid, table_w).astype(jnp.float32)
      logits = logits.reshape(b, self.num_heads, h, w, h, w)
      logits = logits + bias_h[..., :, None] + bias_w[..., None, :]
      logits = logits.reshape(b, self.num_heads, h * w, h * w)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bnqk,bknd->bqnd", weights, v).reshape(b, h, w, dim)
    return nn.Dense(dim, dtype=self.dtype, name="proj")(out)


class MLPBlock(nn.Module):
  """lin1 -> activation -> lin2 (torch's MLPBlock; GELU is the exact erf form)."""
  mlp_dim: int
  activation: str = "gelu"
  dtype: Dtype | None = None  # None: the inputs' dtype

  @nn.compact
  def __call__(self, x):
    act = {"gelu": lambda y: jax.nn.gelu(y, approximate=False), "relu": jax.nn.relu}[self.activation]
    y = act(nn.Dense(self.mlp_dim, dtype=self.dtype, name="lin1")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="lin2")(y)


class Block(nn.Module):
  """Pre-norm transformer block; window_size 0 means global attention over the whole grid."""
  num_heads: int
  mlp_ratio: float
  window_size: int
  input_size: tuple[int, int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shortcut = x
    x = layer_norm(1e-6, self.dtype, name="norm1")(x)
    attn_size = (self.window_size, self.window_size) if self.window_size else self.input_size
    attn = Attention(self.num_heads, attn_size, dtype=self.dtype, name="attn")
    if self.window_size:
      hw = x.shape[1:3]
      windows, padded_hw = window_partition(x, self.window_size)
      x = window_unpartition(attn(windows), self.window_size, padded_hw, hw)
    else:
      x = attn(x)
    x = shortcut + x
    mlp = MLPBlock(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")
    return x + mlp(layer_norm(1e-6, self.dtype, name="norm2")(x))


class PatchEmbed(nn.Module):
  embed_dim: int
  patch_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.embed_dim, (self.patch_size,) * 2, strides=self.patch_size, padding="VALID",
                   dtype=self.dtype, name="proj")(x)


class ImageEncoderViT(nn.Module):
  """(B, img_size, img_size, 3) normalised pixels -> (B, img/patch, img/patch, out_chans) float32."""
  img_size: int = 1024
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  out_chans: int = 256
  window_size: int = 14
  global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    grid = self.img_size // self.patch_size
    x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name="patch_embed")(pixels.astype(self.dtype))
    pos_embed = self.param("pos_embed", nn.initializers.zeros, (1, grid, grid, self.embed_dim))
    x = x + pos_embed.astype(self.dtype)
    for i in range(self.depth):
      window = 0 if i in self.global_attn_indexes else self.window_size
      x = Block(self.num_heads, self.mlp_ratio, window, (grid, grid), self.dtype, name=f"blocks_{i}")(x)
    # The neck runs in float32: it is cheap and its output is the cached embedding.
    x = x.astype(jnp.float32)
    x = nn.Conv(self.out_chans, (1, 1), use_bias=False, name="neck_0")(x)
    x = LayerNorm2d(name="neck_1")(x)
    x = nn.Conv(self.out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="neck_2")(x)
    return LayerNorm2d(name="neck_3")(x)
