"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from sampot_jax.sam.common import MLPBlock, layer_norm


class Attention(nn.Module):
  """Multi-head attention with separate q/k/v projections, optionally downsampling the width."""
  embedding_dim: int
  num_heads: int
  downsample_rate: int = 1

  @nn.compact
  def __call__(self, q, k, v, projected: dict | None = None):
    """q (B,Q,C), k and v (B,K,C) -> (B,Q,C). `projected` maps "q", "k" or "v" to that input
    already projected (B, ., C/rate): the image side, computed once per image (ImageSide)."""
    internal = self.embedding_dim // self.downsample_rate
    head_dim = internal // self.num_heads
    split = lambda x: x.reshape(*x.shape[:-1], self.num_heads, head_dim)
    projected = projected or {}
    project = lambda name, x: projected[name] if name in projected else nn.Dense(
        internal, name=f"{name}_proj")(x)
    q, k, v = split(project("q", q)), split(project("k", k)), split(project("v", v))
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / jnp.sqrt(jnp.float32(head_dim))
    out = jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(logits, axis=-1), v)
    return nn.Dense(self.embedding_dim, name="out_proj")(out.reshape(*out.shape[:-2], internal))


class TwoWayAttentionBlock(nn.Module):
  """Self-attention on tokens, tokens->image, MLP on tokens, image->tokens."""
  embedding_dim: int
  num_heads: int
  mlp_dim: int
  attention_downsample_rate: int = 2
  skip_first_layer_pe: bool = False

  @nn.compact
  def __call__(self, queries, keys, query_pe, key_pe, image_side: dict | None = None):
    """image_side: this block's projections of the image tokens (first block only; see
    ImageSide), used instead of computing them."""
    image_side = image_side or {}
    dim, heads, rate = self.embedding_dim, self.num_heads, self.attention_downsample_rate
    self_attn = Attention(dim, heads, name="self_attn")
    if self.skip_first_layer_pe:
      # The first layer's queries are the prompt embeddings themselves: no residual, no PE.
      queries = self_attn(queries, queries, queries)
    else:
      q = queries + query_pe
      queries = queries + self_attn(q, q, queries)
    queries = layer_norm(1e-5, name="norm1")(queries)

    q, k = queries + query_pe, keys + key_pe
    queries = queries + Attention(dim, heads, rate, name="cross_attn_token_to_image")(
        q, k, keys, {n: image_side[n] for n in ("k", "v") if n in image_side})
    queries = layer_norm(1e-5, name="norm2")(queries)

    queries = queries + MLPBlock(self.mlp_dim, activation="relu", name="mlp")(queries)
    queries = layer_norm(1e-5, name="norm3")(queries)

    q, k = queries + query_pe, keys + key_pe
    keys = keys + Attention(dim, heads, rate, name="cross_attn_image_to_token")(
        k, q, queries, {"q": image_side["q"]} if "q" in image_side else None)
    keys = layer_norm(1e-5, name="norm4")(keys)
    return queries, keys


class TwoWayTransformer(nn.Module):
  depth: int = 2
  embedding_dim: int = 256
  num_heads: int = 8
  mlp_dim: int = 2048
  attention_downsample_rate: int = 2

  @nn.compact
  def __call__(self, image_embedding, image_pe, point_embedding, image_side: dict | None = None):
    """(B,h,w,C) image, (B,h,w,C) its PE, (B,T,C) tokens -> tokens (B,T,C), image (B,hw,C).

    image_side: the first block's projections of the image tokens, {"k", "v", "q"} each
    (B, hw, C/rate) (MaskDecoder.image_side), which do not depend on the prompt."""
    b, h, w, c = image_embedding.shape
    keys = image_embedding.reshape(b, h * w, c)
    key_pe = image_pe.reshape(b, h * w, c)
    queries = point_embedding
    for i in range(self.depth):
      queries, keys = TwoWayAttentionBlock(
          self.embedding_dim, self.num_heads, self.mlp_dim, self.attention_downsample_rate,
          skip_first_layer_pe=i == 0, name=f"layers_{i}")(
              queries, keys, point_embedding, key_pe, image_side if i == 0 else None)
    q, k = queries + point_embedding, keys + key_pe
    attn = Attention(self.embedding_dim, self.num_heads, self.attention_downsample_rate,
                     name="final_attn_token_to_image")
    queries = layer_norm(1e-5, name="norm_final_attn")(queries + attn(q, k, keys))
    return queries, keys
