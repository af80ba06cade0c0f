"""SAM's image encoder: a ViT with windowed and global attention and a conv neck.

Module and parameter names mirror the official PyTorch state_dict
(`image_encoder.blocks.3.attn.qkv.weight` <-> `image_encoder/blocks_3/attn/qkv/kernel`),
so the port in `ports/sam.py` is a table of renames and transposes.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sampot_jax.sam.common import LayerNorm2d, MLPBlock, layer_norm

Dtype = Any


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


# Float32 logits made at once by `grid_attention`. On a CPU a chunk this size stays in the
# last-level cache while it is biased, exponentiated and multiplied by v, instead of a pass through
# memory each. On a GPU, chunks must be large enough to fill the chip: one image's global attention
# (12 x 4096^2 floats for vit_b) at a time.
CHUNK_BYTES = {"cpu": 16 * 2**20}
DEFAULT_CHUNK_BYTES = 2**30


def chunk_bytes_for(backend: str | None = None) -> int:
  return CHUNK_BYTES.get(backend or jax.default_backend(), DEFAULT_CHUNK_BYTES)


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(at_most, 1))


def grid_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias_h: jax.Array,
                   bias_w: jax.Array, chunk_bytes: int | None = None) -> jax.Array:
  """Softmax attention over an (h, w) grid of tokens plus a decomposed position bias.

  logits[qh, qw, kh, kw] = q[qh, qw] . k[kh, kw] + bias_h[qh, qw, kh] + bias_w[qh, qw, kw]

  Args:
    q, k, v: (B, heads, h, w, hd); q already scaled.
    bias_h: (B, heads, h, w, h) float32; bias_w: (B, heads, h, w, w) float32.
    chunk_bytes: float32 logits made at once (default `chunk_bytes_for` the backend); chunks
      are query rows, then images.

  Returns:
    (B, heads, h, w, hd) in v.dtype.

  Neither the (h*w, h*w) logits nor the full bias are materialised: each chunk of query rows
  gets its bias added on the fly, and the softmax is normalised after the product with v
  (hd wide) rather than before it (h*w wide).
  """
  b, n, h, w, d = q.shape
  chunk_bytes = chunk_bytes or chunk_bytes_for()
  # Keys as (d, h*w) matrices, transposed once here rather than in every chunk's matmul.
  k = jnp.swapaxes(k.reshape(b, n, h * w, d), -1, -2)
  v = v.reshape(b, n, h * w, d)
  image_bytes = n * (h * w) ** 2 * 4
  rows = h if image_bytes <= chunk_bytes else _largest_divisor(h, chunk_bytes // (image_bytes // h))
  images = _largest_divisor(b, chunk_bytes // image_bytes) if rows == h else 1

  def attend_rows(q, k, v, bias_h, bias_w):
    # q (c, n, r, w, d): r query rows of c images against every key of those images. The
    # matmuls are 3-d (one batch axis), which XLA:CPU fuses with the bias, max and exp.
    c, r = q.shape[0], q.shape[2]
    logits = jnp.matmul(q.reshape(c * n, r * w, d), k.reshape(c * n, d, h * w),
                        preferred_element_type=jnp.float32)
    logits = logits.reshape(c, n, r, w, h, w) + bias_h[..., :, None] + bias_w[..., None, :]
    logits = logits.reshape(c * n, r * w, h * w)
    e = jnp.exp(logits - logits.max(-1, keepdims=True))
    out = jnp.matmul(e.astype(v.dtype), v.reshape(c * n, h * w, d),
                     preferred_element_type=jnp.float32)
    out = out / e.sum(-1, keepdims=True)
    return out.astype(v.dtype).reshape(c, n, r, w, d)

  def attend_images(q, k, v, bias_h, bias_w):
    # All query rows of `images` images, `rows` rows at a time.
    if rows == h:
      return attend_rows(q, k, v, bias_h, bias_w)
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[:2] + (h // rows, rows) + x.shape[3:]), 2, 0)
    out = jax.lax.map(lambda a: attend_rows(a[0], k, v, a[1], a[2]),
                      (split(q), split(bias_h), split(bias_w)))
    return jnp.moveaxis(out, 0, 2).reshape(q.shape[:-1] + (d,))

  if images == b:
    return attend_images(q, k, v, bias_h, bias_w)
  split = lambda x: x.reshape((b // images, images) + x.shape[1:])
  out = jax.lax.map(lambda a: attend_images(*a), tuple(map(split, (q, k, v, bias_h, bias_w))))
  return out.reshape((b,) + out.shape[2:])


class Attention(nn.Module):
  """Multi-head self-attention with decomposed relative position bias, global or in windows.

  Takes and returns the (B,H,W,C) grid. With `window_size`, the grid is zero-padded to a multiple
  of the window and attention runs within each window, as the official Block does around its
  Attention; here qkv and proj see only the real tokens (a padded token's q, k, v is exactly
  the qkv bias), which saves their matmuls on the padding.
  """
  num_heads: int
  input_size: tuple[int, int]
  window_size: int = 0
  qkv_bias: bool = True
  use_rel_pos: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, dim = x.shape
    n = self.num_heads
    d = dim // n
    qkv_layer = nn.Dense(3 * dim, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")
    qkv = qkv_layer(x)
    win = self.window_size
    if win:
      pad_h, pad_w = -h % win, -w % win
      if pad_h or pad_w:
        fill = (qkv_layer.variables["params"]["bias"].astype(qkv.dtype) if self.qkv_bias
                else jnp.zeros((3 * dim,), qkv.dtype))
        qkv = jnp.concatenate([qkv, jnp.broadcast_to(fill, (b, h, pad_w, 3 * dim))], axis=2)
        qkv = jnp.concatenate([qkv, jnp.broadcast_to(fill, (b, pad_h, w + pad_w, 3 * dim))],
                              axis=1)
      gh, gw = (h + pad_h) // win, (w + pad_w) // win
      # One transpose: windows to the batch axis and heads before the grid.
      qkv = qkv.reshape(b, gh, win, gw, win, 3, n, d).transpose(5, 0, 1, 3, 6, 2, 4, 7)
      qkv = qkv.reshape(3, b * gh * gw, n, win, win, d)
      th, tw = win, win
    else:
      qkv = qkv.reshape(b, h, w, 3, n, d).transpose(3, 0, 4, 1, 2, 5)
      th, tw = h, w
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B', heads, th, tw, hd)
    if self.use_rel_pos:
      rel_h = self.param("rel_pos_h", nn.initializers.zeros, (2 * self.input_size[0] - 1, d))
      rel_w = self.param("rel_pos_w", nn.initializers.zeros, (2 * self.input_size[1] - 1, d))
      table_h = relative_position_table(rel_h, th, th).astype(self.dtype)  # (th, th, hd)
      table_w = relative_position_table(rel_w, tw, tw).astype(self.dtype)  # (tw, tw, hd)
      # The official bias uses the unscaled q.
      bias_h = jnp.einsum("bnhwc,hkc->bnhwk", q, table_h, preferred_element_type=jnp.float32)
      bias_w = jnp.einsum("bnhwc,wkc->bnhwk", q, table_w, preferred_element_type=jnp.float32)
    else:
      bias_h = jnp.zeros(q.shape[:-1] + (th,), jnp.float32)
      bias_w = jnp.zeros(q.shape[:-1] + (tw,), jnp.float32)
    out = grid_attention(q * jnp.asarray(d**-0.5, q.dtype), k, v, bias_h, bias_w)
    if win:
      out = out.reshape(b, gh, gw, n, win, win, d).transpose(0, 1, 4, 2, 5, 3, 6)
      out = out.reshape(b, gh * win, gw * win, dim)[:, :h, :w]
    else:
      out = out.transpose(0, 2, 3, 1, 4).reshape(b, h, w, dim)
    return nn.Dense(dim, dtype=self.dtype, name="proj")(out)


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
    x = shortcut + Attention(self.num_heads, attn_size, self.window_size, dtype=self.dtype,
                             name="attn")(x)
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
