"""The paper's full experiment: SAMPOT plus every baseline and the oracle heat maps.

  python main.py --config configs/evaluate.py --workdir runs/evaluate

configs/evolve.py with the grid search and the oracle (a 16 x 16 grid of clicks
per image: 256 extra SAM decodes per image).
"""
from configs import evolve


def get_config():
  config = evolve.get_config()
  config.baselines.grid_size = 16
  return config
