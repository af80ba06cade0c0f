"""SAM's prompt encoder: points, boxes and a dense mask -> sparse and dense embeddings.

Coordinates here are in the model frame (pixels of the resized, unpadded 1024 input);
`transforms.py` maps original-image clicks into it.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sampot_jax.sam.common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
  """Random-Fourier positional encoding of (x, y) in [0, 1]^2 -> 2 * num_pos_feats channels."""
  num_pos_feats: int = 128
  scale: float = 1.0

  def setup(self):
    # A fixed (non-learned) buffer in torch; here a parameter that nothing trains.
    self.positional_encoding_gaussian_matrix = self.param(
        "positional_encoding_gaussian_matrix",
        lambda rng, shape: self.scale * jax.random.normal(rng, shape), (2, self.num_pos_feats))

  def encode(self, coords):
    """(..., 2) coordinates normalised to [0,1] -> (..., 2 * num_pos_feats)."""
    coords = 2 * coords - 1
    coords = 2 * math.pi * (coords @ self.positional_encoding_gaussian_matrix)
    return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

  def grid(self, size: tuple[int, int]):
    """(h, w) -> (h, w, C) encoding of pixel centres."""
    h, w = size
    y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    xy = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
    return self.encode(xy)

  def with_coords(self, coords, image_size: tuple[int, int]):
    """(..., 2) pixel coordinates (x, y) in an image of (h, w) -> (..., C)."""
    h, w = image_size
    # Integer clicks become float32 (torch's coords.float()); float64 stays, for gradient checks.
    coords = coords.astype(jnp.promote_types(coords.dtype, jnp.float32))
    return self.encode(coords / jnp.array([w, h], coords.dtype))


class PromptEncoder(nn.Module):
  embed_dim: int = 256
  image_embedding_size: tuple[int, int] = (64, 64)
  input_image_size: tuple[int, int] = (1024, 1024)
  mask_in_chans: int = 16

  def setup(self):
    self.pe_layer = PositionEmbeddingRandom(self.embed_dim // 2)
    embed = lambda: nn.Embed(1, self.embed_dim, embedding_init=nn.initializers.normal(1.0))
    # Labels 0 (negative) and 1 (positive) for points; 2 and 3 for the box corners.
    self.point_embeddings = [embed() for _ in range(4)]
    self.not_a_point_embed = embed()
    self.no_mask_embed = embed()
    self.mask_downscaling_0 = nn.Conv(self.mask_in_chans // 4, (2, 2), strides=2, padding="VALID")
    self.mask_downscaling_1 = LayerNorm2d()
    self.mask_downscaling_3 = nn.Conv(self.mask_in_chans, (2, 2), strides=2, padding="VALID")
    self.mask_downscaling_4 = LayerNorm2d()
    self.mask_downscaling_6 = nn.Conv(self.embed_dim, (1, 1))

  @property
  def mask_input_size(self) -> tuple[int, int]:
    return (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])

  def dense_pe(self):
    """(1, h, w, C) positional encoding of the image embedding grid."""
    return self.pe_layer.grid(self.image_embedding_size)[None]

  def embed_points(self, points, labels, pad: bool):
    """(B,N,2) model-frame points, (B,N) labels in {-1,0,1} -> (B, N[+1], C)."""
    points = points + 0.5  # pixel centres
    if pad:
      b = points.shape[0]
      points = jnp.concatenate([points, jnp.zeros((b, 1, 2), points.dtype)], axis=1)
      labels = jnp.concatenate([labels, -jnp.ones((b, 1), labels.dtype)], axis=1)
    emb = self.pe_layer.with_coords(points, self.input_image_size)
    labels = labels[..., None]
    emb = jnp.where(labels == -1, self.not_a_point_embed.embedding[0], emb)
    emb = emb + jnp.where(labels == 0, self.point_embeddings[0].embedding[0], 0.0)
    return emb + jnp.where(labels == 1, self.point_embeddings[1].embedding[0], 0.0)

  def embed_boxes(self, boxes):
    """(B,4) model-frame boxes (x0,y0,x1,y1) -> (B,2,C) corner embeddings."""
    corners = (boxes + 0.5).reshape(-1, 2, 2)
    emb = self.pe_layer.with_coords(corners, self.input_image_size)
    return emb + jnp.stack([self.point_embeddings[2].embedding[0], self.point_embeddings[3].embedding[0]])

  def embed_masks(self, masks):
    """(B, 4h, 4w) mask logits -> (B, h, w, C)."""
    x = masks[..., None]
    x = jax.nn.gelu(self.mask_downscaling_1(self.mask_downscaling_0(x)), approximate=False)
    x = jax.nn.gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)), approximate=False)
    return self.mask_downscaling_6(x)

  def __call__(self, points=None, labels=None, boxes=None, masks=None):
    """Returns sparse (B, n_tokens, C) and dense (B, h, w, C) prompt embeddings."""
    if points is not None:
      batch = points.shape[0]
    elif boxes is not None:
      batch = boxes.shape[0]
    elif masks is not None:
      batch = masks.shape[0]
    else:
      batch = 1
    sparse = [jnp.zeros((batch, 0, self.embed_dim), jnp.float32)]
    if points is not None:
      sparse.append(self.embed_points(points, labels, pad=boxes is None))
    if boxes is not None:
      sparse.append(self.embed_boxes(boxes))
    sparse = jnp.concatenate(sparse, axis=1)
    if masks is not None:
      dense = self.embed_masks(masks)
    else:
      h, w = self.image_embedding_size
      dense = jnp.broadcast_to(self.no_mask_embed.embedding[0], (batch, h, w, self.embed_dim))
    return sparse, dense
