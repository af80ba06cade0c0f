"""lite_medsam_evaluate.py in seconds: 3 test images, random tiny models (no weights needed)."""
import ml_collections

from configs import lite_medsam_evaluate
from configs import lite_medsam_regressor_tiny


def get_config():
  config = lite_medsam_evaluate.get_config()
  config.max_images = 3
  config.data.image_size = 64
  config.sam.random_init = True
  config.sam.overrides = lite_medsam_regressor_tiny.get_config().sam.overrides
  config.regressor.random_init = True
  config.regressor.model = ml_collections.ConfigDict(dict(
      features=(4, 4, 8, 8, 8), strides=(2, 2, 2, 2, 1), kernel_size=3, resolution=32,
      coord_channels=False, readout="flatten", negative_slope=0.01, bn_momentum=0.9))
  config.evolve.num_steps = 4
  config.batch_size = 3
  config.encode_batch_size = 3
  config.embedding_cache_dir = ""
  return config
