"""lite_medsam_regressor.py in seconds: a few images at 64 px, a tiny random TinyViT SAM."""
from configs import lite_medsam_regressor
from configs import regressor_paper_tiny


def get_config():
  config = lite_medsam_regressor.get_config()
  tiny = regressor_paper_tiny.get_config()
  for key in ("max_images_per_split", "batch_size", "num_epochs", "log_every",
              "eval_batch_size", "sweep_offsets"):
    config[key] = tiny[key]
  config.data.image_size = 64
  config.model = tiny.model
  config.model.coord_channels = True
  config.candidates.model_boxes = 3
  config.train_val_candidates.model_boxes = 4
  config.sam.random_init = True
  config.sam.overrides = dict(
      img_size=64, embed_dims=(8, 8, 8, 8), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
      window_sizes=(2, 2, 2, 2), prompt_embed_dim=16, transformer_mlp_dim=16,
      iou_head_hidden_dim=16, transformer_depth=1, transformer_heads=1, iou_head_depth=1)
  return config
