"""SAM's mask decoder: tokens + image embedding -> low-resolution mask logits and IoU predictions."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from sampot_jax.sam.common import LayerNorm2d, gelu
from sampot_jax.sam.transformer import TwoWayTransformer


class MLP(nn.Module):
  """num_layers Dense layers named layers_0..; ReLU between them, none after the last."""
  hidden_dim: int
  output_dim: int
  num_layers: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.output_dim if last else self.hidden_dim, name=f"layers_{i}")(x)
      x = x if last else jax.nn.relu(x)
    return x


class ConvTranspose2x2(nn.Module):
  """torch ConvTranspose2d(kernel_size=2, stride=2): each input pixel writes one 2x2 output patch.

  (..., in) -> (..., 2, 2, out): the patch stays beside its pixel ("phase" layout) rather than
  being interleaved into a 2x larger grid, so that this and everything after it, per pixel, are
  plain matmuls and elementwise ops; `interleave_phases` makes the image once, at the end. The
  kernel is (2, 2, in, out): kernel[p, q] maps input (i, j) to output (2i+p, 2j+q).
  """
  features: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return jnp.einsum("...c,pqco->...pqo", x, kernel) + bias


def interleave_phases(x: jax.Array, k: int) -> jax.Array:
  """(..., h, w, 2, 2, ..., 2, 2) with k (2, 2) phase pairs -> (..., h 2^k, w 2^k) image.

  Element (i, j, p1, q1, ..., pk, qk) goes to row i 2^k + p1 2^(k-1) + ... + pk and column
  j 2^k + q1 2^(k-1) + ... + qk: each ConvTranspose2x2 adds the next finer pair.
  """
  lead = x.ndim - 2 - 2 * k
  if lead < 0 or x.shape[lead + 2:] != (2,) * (2 * k):
    raise ValueError(f"expected (..., h, w) followed by {k} pairs of 2x2 phases; got {x.shape}")
  h, w = x.shape[lead:lead + 2]
  rows = [lead] + [lead + 2 + 2 * i for i in range(k)]
  cols = [lead + 1] + [lead + 3 + 2 * i for i in range(k)]
  x = jnp.transpose(x, tuple(range(lead)) + tuple(rows) + tuple(cols))
  return x.reshape(*x.shape[:lead], h * 2**k, w * 2**k)


class MaskDecoder(nn.Module):
  transformer_dim: int = 256
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256
  transformer_depth: int = 2
  transformer_heads: int = 8
  transformer_mlp_dim: int = 2048

  @nn.compact
  def __call__(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool,
               image_side: dict | None = None):
    """Embeddings (B,h,w,C), PE (1,h,w,C), sparse (B,T,C), dense (B,h,w,C) ->
    masks (B, M, 4h, 4w) logits, iou (B, M); M = 3 if multimask_output else 1.

    image_side: `image_side_projections` of these embeddings (and this `dense`), or None.
    """
    dim = self.transformer_dim
    num_mask_tokens = self.num_multimask_outputs + 1
    iou_token = nn.Embed(1, dim, name="iou_token").embedding
    mask_tokens = nn.Embed(num_mask_tokens, dim, name="mask_tokens").embedding
    b = sparse.shape[0]
    output_tokens = jnp.broadcast_to(jnp.concatenate([iou_token, mask_tokens])[None],
                                     (b, 1 + num_mask_tokens, dim))
    tokens = jnp.concatenate([output_tokens, sparse], axis=1)
    src = image_embeddings + dense
    pos = jnp.broadcast_to(image_pe, src.shape)
    transformer = TwoWayTransformer(self.transformer_depth, dim, self.transformer_heads,
                                    self.transformer_mlp_dim, name="transformer")
    if image_side is not None:
      image_side = {k: jnp.broadcast_to(x, (b,) + x.shape[1:]) for k, x in image_side.items()}
    hs, src = transformer(src, pos, tokens, image_side)
    iou_token_out = hs[:, 0]
    mask_tokens_out = hs[:, 1:1 + num_mask_tokens]

    h, w = image_embeddings.shape[1:3]
    # Phase layout (see ConvTranspose2x2): (B, h, w, 2, 2, 2, 2, C/8), 4x upscaled.
    up = ConvTranspose2x2(dim // 4, name="output_upscaling_0")(src.reshape(b, h, w, dim))
    up = gelu(LayerNorm2d(name="output_upscaling_1")(up))
    up = gelu(ConvTranspose2x2(dim // 8, name="output_upscaling_3")(up))
    # Token 0 is the single-mask output; tokens 1..3 are the multimask outputs. Only the
    # requested tokens are turned into masks (the product with `up` is the costly part); at init
    # every hypernetwork is called, since Flax creates parameters on a module's first call.
    wanted = list(range(1, num_mask_tokens)) if multimask_output else [0]
    called = range(num_mask_tokens) if self.is_initializing() else wanted
    hyper = {i: MLP(dim, dim // 8, 3, name=f"output_hypernetworks_mlps_{i}")(mask_tokens_out[:, i])
             for i in called}
    hyper_in = jnp.stack([hyper[i] for i in wanted], axis=1)  # (B, M, C/8)
    # Channels stay the minor axis of `up`: written (pixels, C/8) x (C/8, M), XLA:CPU runs one
    # matmul; written as "bmc,bhwpqrsc->bmhwpqrs" it first transposed all of `up` (2M values)
    # channels-major, forward and backward: a quarter of the upscaling's time in a SAMPOT step
    # (docs/benchmarks.md, "SAMPOT after the mask-product change").
    masks = jnp.einsum("bnc,bmc->bnm", up.reshape(b, -1, up.shape[-1]), hyper_in)
    masks = jnp.moveaxis(masks, -1, 1).reshape(b, len(wanted), *up.shape[1:-1])
    masks = interleave_phases(masks, 2)
    iou_pred = MLP(self.iou_head_hidden_dim, num_mask_tokens, self.iou_head_depth,
                   name="iou_prediction_head")(iou_token_out)
    return masks, iou_pred[:, wanted[0]:wanted[-1] + 1]


def image_side_projections(decoder_params, image_embeddings, image_pe, dense) -> dict:
  """The decoder's work that depends on the image alone, done once per image instead of at
  every prompt: the first transformer block's projections of the image tokens (keys and values
  of token->image attention, queries of image->token attention), 3 of the decoder's
  (hw x 256 x 128) matmuls. The same products as the layers compute.

  decoder_params: params["mask_decoder"]; embeddings (B,h,w,C), PE (1,h,w,C), dense (B or 1,
  h,w,C) (the no-mask embedding) -> {"k", "v", "q"}: (B, hw, C/2) each.
  """
  b, h, w, c = image_embeddings.shape
  keys = (image_embeddings + dense).reshape(b, h * w, c)
  with_pe = keys + image_pe.reshape(1, h * w, c)
  block = decoder_params["transformer"]["layers_0"]
  dense_layer = lambda p, x: jax.lax.dot_general(
      x, p["kernel"], (((x.ndim - 1,), (0,)), ((), ()))) + p["bias"]
  return {"k": dense_layer(block["cross_attn_token_to_image"]["k_proj"], with_pe),
          "v": dense_layer(block["cross_attn_token_to_image"]["v_proj"], keys),
          "q": dense_layer(block["cross_attn_image_to_token"]["q_proj"], with_pe)}
