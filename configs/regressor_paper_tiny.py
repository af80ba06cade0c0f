"""regressor_paper.py, tiny, for tests: a few images, 64x64, seconds."""
from configs import regressor_paper


def get_config():
  config = regressor_paper.get_config()
  config.data.image_size = 64
  config.max_images_per_split = 3
  config.model.features = (4, 4, 8, 8, 8)
  config.model.resolution = 64
  config.batch_size = 8
  config.num_epochs = 4
  config.log_every = 1
  config.eval_batch_size = 16
  config.sweep_offsets = (-4, -2, 0, 2, 4)
  return config
