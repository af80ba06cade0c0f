"""SAM's mask decoder: tokens + image embedding -> low-resolution mask logits and IoU predictions."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from sampot_jax.sam.image_encoder import LayerNorm2d
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

  The kernel is (2, 2, in, out): kernel[p, q] maps input (i, j) to output (2i+p, 2j+q).
  """
  features: int

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jnp.einsum("nhwc,pqco->nhpwqo", x, kernel)
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias


class MaskDecoder(nn.Module):
  transformer_dim: int = 256
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256
  transformer_depth: int = 2
  transformer_heads: int = 8
  transformer_mlp_dim: int = 2048

  @nn.compact
  def __call__(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool):
    """Embeddings (B,h,w,C), PE (1,h,w,C), sparse (B,T,C), dense (B,h,w,C) ->
    masks (B, M, 4h, 4w) logits, iou (B, M); M = 3 if multimask_output else 1.
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
    hs, src = transformer(src, pos, tokens)
    iou_token_out = hs[:, 0]
    mask_tokens_out = hs[:, 1:1 + num_mask_tokens]

    h, w = image_embeddings.shape[1:3]
    up = ConvTranspose2x2(dim // 4, name="output_upscaling_0")(src.reshape(b, h, w, dim))
    up = jax.nn.gelu(LayerNorm2d(name="output_upscaling_1")(up), approximate=False)
    up = jax.nn.gelu(ConvTranspose2x2(dim // 8, name="output_upscaling_3")(up), approximate=False)
    hyper_in = jnp.stack([
        MLP(dim, dim // 8, 3, name=f"output_hypernetworks_mlps_{i}")(mask_tokens_out[:, i])
        for i in range(num_mask_tokens)
    ], axis=1)  # (B, M, C/8)
    masks = jnp.einsum("bmc,bhwc->bmhw", hyper_in, up)
    iou_pred = MLP(self.iou_head_hidden_dim, num_mask_tokens, self.iou_head_depth,
                   name="iou_prediction_head")(iou_token_out)
    # Token 0 is the single-mask output; tokens 1..3 are the multimask outputs.
    sl = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, sl], iou_pred[:, sl]
