"""configs/app.py with refine_tiny's tiny random models (tests, CI): seconds on a CPU, no
weights; the masks mean nothing.

  python main.py --config configs/app_tiny.py --workdir OUT --config.port=0
"""
import ml_collections

from configs import app
from configs import refine_tiny


def get_config() -> ml_collections.ConfigDict:
  config = app.get_config()
  tiny = refine_tiny.get_config()
  for field in ("seed", "sam", "regressor", "evolve", "reference_side", "safeguards"):
    config[field] = tiny[field]
  return config
