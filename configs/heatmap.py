"""Fig. 1: the true Dice of SAM's mask for a click at each of 64 x 64 positions.

  python main.py --config configs/heatmap.py --workdir runs/heatmap \
      [--config.heatmap.ids="('MCUCXR_0001_0',)"]
"""
import ml_collections

from configs import evolve


def get_config():
  config = evolve.get_config()
  config.task = "heatmap"
  config.heatmap = ml_collections.ConfigDict()
  config.heatmap.ids = ()           # subject ids; empty: the first num_images of the split
  config.heatmap.num_images = 1
  config.heatmap.grid_size = 64
  return config
