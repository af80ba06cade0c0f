"""configs/refine.py with tiny random models (a tiny SAM with LiteMedSAM's processing, and a
small regressor): seconds on a CPU, no weights, for tests. The masks mean nothing.

  python main.py --config configs/refine_tiny.py --config.images=PATH \
      --config.prompts=prompts.csv --workdir OUT
"""
import ml_collections

from configs import refine


def get_config():
  config = refine.get_config()
  config.sam.random_init = True
  config.sam.fetch_if_missing = False
  config.sam.checkpoint_dir = ""
  # A tiny ViT SAM with LiteMedSAM's processing (area resize of the longest side, min-max
  # normalisation, one box scale, low-res logits at the input size: patch 4 at 64 px gives a
  # 16 x 16 grid and 64 x 64 logits). Not the TinyViT encoder: frozen.random_like leaves
  # TinyViT's BatchNorm running_var at 0, so a random TinyViT overflows to NaN.
  config.sam.variant = "vit_b"
  config.sam.overrides = dict(
      preprocess="lite_medsam", img_size=64, patch_size=4, embed_dim=16, depth=1, num_heads=1,
      global_attn_indexes=(0,), window_size=4, prompt_embed_dim=16, transformer_mlp_dim=16,
      iou_head_hidden_dim=16, transformer_depth=1, transformer_heads=1, iou_head_depth=1)

  config.regressor.random_init = True
  config.regressor.workdir = ""
  config.regressor.model = ml_collections.ConfigDict(dict(
      features=(4, 4, 8, 8, 8), strides=(2, 2, 2, 2, 1), kernel_size=3, resolution=32,
      coord_channels=False, readout="flatten", negative_slope=0.01, bn_momentum=0.9))

  config.evolve.num_steps = 4
  return config
