"""train_regressor.py in seconds: a plain folder of a few images at 64 px, a tiny random
TinyViT SAM, a verdict on 2 test images (set --config.data.dir)."""
from configs import lite_medsam_regressor_tiny
from configs import train_regressor


def get_config():
  config = train_regressor.get_config()
  tiny = lite_medsam_regressor_tiny.get_config()
  for key in ("max_images_per_split", "batch_size", "num_epochs", "log_every",
              "eval_batch_size", "sweep_offsets", "model", "candidates", "train_val_candidates",
              "sam"):
    config[key] = tiny[key]
  config.data.image_size = tiny.data.image_size
  config.evolve.num_steps = 3
  config.verdict.images = 2
  config.verdict.batch_size = 2
  config.verdict.image_size = 64
  return config
