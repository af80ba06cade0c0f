"""A quick real-data check of configs/evaluate.py: 4 test images, few steps, a coarse grid."""
from configs import evaluate


def get_config():
  config = evaluate.get_config()
  config.max_images = 4
  config.evolve.num_steps = 5
  config.baselines.grid_size = 6
  config.batch_size = 4
  return config
