"""TinyViT, the image encoder of LiteMedSAM and MobileSAM, with SAM's conv neck.

Module and parameter names mirror the PyTorch state_dict of `tiny_vit_sam.py`
(`image_encoder.layers.1.blocks.0.attn.qkv.weight` <->
`image_encoder/layers_1/blocks_0/attn/qkv/kernel`), so the port in `ports/sam.py` stays a table.

The model is frozen, so BatchNorm is inference-only: its running statistics are ordinary
parameters next to its weight and bias (one `params` tree, no `batch_stats` collection), and
it is folded into the conv before it.

Layout of the encoder (NHWC throughout):

  patch_embed   Conv2d_BN, GELU, Conv2d_BN; kernel `stem_kernel`, stride `stem_stride` each
                (LiteMedSAM: 1x1 stride 1; MobileSAM: 3x3 stride 2, so a quarter of the pixels)
  layers_0      MBConv blocks, then PatchMerging
  layers_1..    TinyViT blocks (windowed attention with a learned bias per offset, depthwise
                `local_conv`, MLP), then PatchMerging except after the last stage
  neck          1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d

PatchMerging i downsamples by `merge_strides[i]`: the official code picks stride 1 when the
output width is 320, 448 or 576 (so the last stage keeps the resolution of the one before);
here the strides are explicit in the config. The official forward reshapes the last stage's
tokens to a hard-coded 64x64 grid; here the grid is whatever the stages produce, which is
64x64 for both official configurations.
"""
import functools
import itertools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sampot_jax.sam.common import LayerNorm2d, gelu, layer_norm

Dtype = Any

BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d default
LN_EPSILON = 1e-5  # torch.nn.LayerNorm default, as the TinyViT attention and MLP use it


class BatchNorm(nn.Module):
  """Inference BatchNorm2d's parameters, as the per-channel affine map it is when frozen.

  (x - mean) / sqrt(var + eps) * weight + bias = x * scale + shift; float32.
  """
  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, channels: int):
    weight = self.param("weight", nn.initializers.ones, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    mean = self.param("running_mean", nn.initializers.zeros, (channels,))
    var = self.param("running_var", nn.initializers.ones, (channels,))
    scale = weight * jax.lax.rsqrt(var + self.epsilon)
    return scale, bias - mean * scale


class ConvKernel(nn.Module):
  """A bias-free conv's weight only (torch `c.weight`, HWIO here); Conv2dBN applies it."""
  shape: tuple[int, int, int, int]

  @nn.compact
  def __call__(self):
    return self.param("kernel", nn.initializers.lecun_normal(), self.shape)


class Conv2dBN(nn.Module):
  """torch's Conv2d_BN: a bias-free conv `c` (optionally depthwise), then a BatchNorm `bn`.

  The BatchNorm is folded into the conv, as torch's Conv2d_BN.fuse does for inference: the
  kernel is scaled per output channel in float32 and the shift added to the float32 result,
  rounded to `dtype` once. LiteMedSAM's running means lie up to 21 running standard deviations
  from 0, so a BatchNorm applied to bfloat16-rounded conv outputs cancels their leading digits;
  folded, the bfloat16 embedding's max error fell from 13.6% to 10.5% of its largest value.
  """
  features: int
  kernel: int = 1
  stride: int = 1
  depthwise: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, pad = self.kernel, self.kernel // 2
    groups = x.shape[-1] if self.depthwise else 1
    weight = ConvKernel((k, k, x.shape[-1] // groups, self.features), name="c")()
    scale, shift = BatchNorm(name="bn")(self.features)
    kernel = (weight * scale).astype(self.dtype)
    if self.depthwise:
      # Products of `dtype`-rounded values, summed in float32: what the conv below computes.
      y = depthwise_conv(x.astype(self.dtype).astype(jnp.float32),
                         kernel[:, :, 0, :].astype(jnp.float32), self.stride, pad)
    else:
      y = jax.lax.conv_general_dilated(
          x.astype(self.dtype), kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
    return (y + shift).astype(self.dtype)


def depthwise_conv(x, kernel, stride: int, pad: int):
  """A depthwise conv, (B, H, W, C) * (k, k, C), as the sum of k^2 shifted, strided slices of the
  zero-padded input times their per-channel weights.

  XLA:CPU runs feature-grouped convolutions on a slow generic path: LiteMedSAM's 3x3 depthwise
  convs took 10-30x longer as `conv_general_dilated(..., feature_group_count=C)` than as this
  sum, which XLA emits as one vectorised loop over the output (docs/benchmarks.md). Same
  products; only the order of the float32 additions differs.
  """
  b, h, w, c = x.shape
  k = kernel.shape[0]
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  out = None
  for i in range(k):
    for j in range(k):
      tap = jax.lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * stride + 1,
                                             j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
      out = tap * kernel[i, j] if out is None else out + tap * kernel[i, j]
  return out


class PatchEmbed(nn.Module):
  """Two Conv2d_BN with a GELU between them: (B, H, W, 3) -> (B, H/s^2, W/s^2, embed_dim).

  The first conv reads the pixels and runs in float32 whatever `dtype` is: it has 3 input
  channels, so it costs little, and rounding the pixels and its output to bfloat16 made a
  quarter of the bfloat16 encoder's error on LiteMedSAM (embedding rms 6.3% -> 4.8% of float32).
  """
  embed_dim: int
  kernel: int = 1
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv2dBN(self.embed_dim // 2, self.kernel, self.stride, dtype=jnp.float32, name="seq_0")(x)
    x = gelu(x.astype(self.dtype))  # seq.1, from here on in `dtype`
    return Conv2dBN(self.embed_dim, self.kernel, self.stride, dtype=self.dtype, name="seq_2")(x)


class MBConv(nn.Module):
  """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU after the sum."""
  expand_ratio: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    hidden = int(c * self.expand_ratio)
    y = gelu(Conv2dBN(hidden, 1, dtype=self.dtype, name="conv1")(x))
    y = gelu(Conv2dBN(hidden, 3, depthwise=True, dtype=self.dtype, name="conv2")(y))
    y = Conv2dBN(c, 1, dtype=self.dtype, name="conv3")(y)
    return gelu(y + x)


class PatchMerging(nn.Module):
  """1x1 conv to out_dim, GELU, 3x3 depthwise conv with `stride`, GELU, 1x1 conv."""
  out_dim: int
  stride: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = gelu(Conv2dBN(self.out_dim, 1, dtype=self.dtype, name="conv1")(x))
    x = gelu(Conv2dBN(self.out_dim, 3, self.stride, depthwise=True, dtype=self.dtype,
                      name="conv2")(x))
    return Conv2dBN(self.out_dim, 1, dtype=self.dtype, name="conv3")(x)


@functools.lru_cache(maxsize=None)
def attention_bias_index(height: int, width: int) -> np.ndarray:
  """(N, N) int32 index into the learned bias table of an (height, width) window, N = h * w.

  Token pairs are numbered row-major; each distinct offset (|dy|, |dx|) gets the next free
  index in the order it is first met, as in the official `attention_bias_idxs` buffer (not
  stored in checkpoints).
  """
  points = list(itertools.product(range(height), range(width)))
  offsets: dict[tuple[int, int], int] = {}
  index = np.empty((len(points), len(points)), np.int32)
  for i, (y1, x1) in enumerate(points):
    for j, (y2, x2) in enumerate(points):
      index[i, j] = offsets.setdefault((abs(y1 - y2), abs(x1 - x2)), len(offsets))
  index.flags.writeable = False
  return index


class Attention(nn.Module):
  """Pre-norm multi-head attention over the tokens of windows, plus a learned offset bias.

  Input (B', N, C) with N = window^2 tokens in row-major order. The qkv output holds, per
  head, [q | k | v] (head_dim each): the official `view(B, N, heads, -1).split(...)`.
  """
  num_heads: int
  window_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, dim = x.shape
    heads = self.num_heads
    d = dim // heads
    x = layer_norm(LN_EPSILON, self.dtype, name="norm")(x)
    qkv = nn.Dense(3 * dim, dtype=self.dtype, name="qkv")(x).reshape(b, n, heads, 3, d)
    q, k, v = (qkv[:, :, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B', heads, N, d)
    index = attention_bias_index(self.window_size, self.window_size)
    table = self.param("attention_biases", nn.initializers.zeros, (heads, int(index.max()) + 1))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * d**-0.5 + table[:, index]
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32).astype(v.dtype)
    out = out.transpose(0, 2, 1, 3).reshape(b, n, dim)
    return nn.Dense(dim, dtype=self.dtype, name="proj")(out)


class Mlp(nn.Module):
  """LayerNorm, fc1, GELU, fc2."""
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = layer_norm(LN_EPSILON, self.dtype, name="norm")(x)
    y = gelu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(y))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


class TinyViTBlock(nn.Module):
  """Window attention (+ residual), depthwise local conv, MLP (+ residual), on a (B,H,W,C) map.

  The map is zero-padded at the bottom and right to a multiple of the window, as in the official
  block. The zeros go through the attention's LayerNorm (becoming its bias) and take part in
  attention as keys and values; they are cropped afterwards.
  """
  num_heads: int
  window_size: int
  mlp_ratio: float
  local_conv_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    win = self.window_size
    pad_h, pad_w = -h % win, -w % win
    y = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0))) if pad_h or pad_w else x
    gh, gw = (h + pad_h) // win, (w + pad_w) // win
    y = y.reshape(b, gh, win, gw, win, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, win * win, c)
    y = Attention(self.num_heads, win, dtype=self.dtype, name="attn")(y)
    y = y.reshape(b, gh, gw, win, win, c).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, gh * win, gw * win, c)[:, :h, :w]
    x = x + y
    x = Conv2dBN(c, self.local_conv_size, depthwise=True, dtype=self.dtype, name="local_conv")(x)
    return x + Mlp(int(c * self.mlp_ratio), dtype=self.dtype, name="mlp")(x)


class ConvLayer(nn.Module):
  """Stage 0: MBConv `blocks`, then an optional `downsample`."""
  depth: int
  expand_ratio: float
  out_dim: int | None
  merge_stride: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.depth):
      x = MBConv(self.expand_ratio, dtype=self.dtype, name=f"blocks_{i}")(x)
    if self.out_dim is not None:
      x = PatchMerging(self.out_dim, self.merge_stride, dtype=self.dtype, name="downsample")(x)
    return x


class BasicLayer(nn.Module):
  """Stages 1..: TinyViT `blocks`, then an optional `downsample`."""
  depth: int
  num_heads: int
  window_size: int
  mlp_ratio: float
  local_conv_size: int
  out_dim: int | None
  merge_stride: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.depth):
      x = TinyViTBlock(self.num_heads, self.window_size, self.mlp_ratio, self.local_conv_size,
                       dtype=self.dtype, name=f"blocks_{i}")(x)
    if self.out_dim is not None:
      x = PatchMerging(self.out_dim, self.merge_stride, dtype=self.dtype, name="downsample")(x)
    return x


def total_stride(stem_stride: int, merge_strides: Sequence[int]) -> int:
  """Input pixels per output cell, along each side: the encoder's `patch_size`."""
  return stem_stride**2 * int(np.prod(merge_strides, dtype=np.int64))


class TinyViT(nn.Module):
  """(B, img_size, img_size, 3) normalised pixels -> (B, grid, grid, out_chans) float32.

  grid = img_size // total_stride(stem_stride, merge_strides): 64 for LiteMedSAM (256 / 4)
  and MobileSAM (1024 / 16).
  """
  embed_dims: Sequence[int] = (64, 128, 160, 320)
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (2, 4, 5, 10)
  window_sizes: Sequence[int] = (7, 7, 14, 7)
  merge_strides: Sequence[int] = (2, 2, 1)
  stem_kernel: int = 1
  stem_stride: int = 1
  mlp_ratio: float = 4.0
  mbconv_expand_ratio: float = 4.0
  local_conv_size: int = 3
  out_chans: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    stages = len(self.depths)
    if not (len(self.embed_dims) == len(self.num_heads) == len(self.window_sizes) == stages
            and len(self.merge_strides) == stages - 1):
      raise ValueError(
          f"TinyViT needs one embed_dim, num_heads and window_size per stage ({stages} depths) and "
          f"one merge stride between stages; got embed_dims={self.embed_dims}, num_heads="
          f"{self.num_heads}, window_sizes={self.window_sizes}, merge_strides={self.merge_strides}")
    x = PatchEmbed(self.embed_dims[0], self.stem_kernel, self.stem_stride, dtype=self.dtype,
                   name="patch_embed")(pixels.astype(jnp.float32))
    for i in range(stages):
      out_dim = self.embed_dims[i + 1] if i < stages - 1 else None
      stride = self.merge_strides[i] if i < stages - 1 else 1
      if i == 0:
        layer = ConvLayer(self.depths[0], self.mbconv_expand_ratio, out_dim, stride,
                          dtype=self.dtype, name="layers_0")
      else:
        layer = BasicLayer(self.depths[i], self.num_heads[i], self.window_sizes[i], self.mlp_ratio,
                           self.local_conv_size, out_dim, stride, dtype=self.dtype,
                           name=f"layers_{i}")
      x = layer(x)
    # The neck runs in float32: it is cheap and its output is the cached embedding.
    x = x.astype(jnp.float32)
    x = nn.Conv(self.out_chans, (1, 1), use_bias=False, name="neck_0")(x)
    x = LayerNorm2d(name="neck_1")(x)
    x = nn.Conv(self.out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="neck_2")(x)
    return LayerNorm2d(name="neck_3")(x)


def from_config(c) -> TinyViT:
  """The TinyViT of a `sam_config` whose encoder is 'tiny_vit'."""
  return TinyViT(
      embed_dims=tuple(c.embed_dims), depths=tuple(c.depths), num_heads=tuple(c.num_heads),
      window_sizes=tuple(c.window_sizes), merge_strides=tuple(c.merge_strides),
      stem_kernel=c.stem_kernel, stem_stride=c.stem_stride, mlp_ratio=c.mlp_ratio,
      mbconv_expand_ratio=c.mbconv_expand_ratio, local_conv_size=c.local_conv_size,
      out_chans=c.prompt_embed_dim, dtype=jnp.dtype(c.encoder_dtype))
