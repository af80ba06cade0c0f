"""configs/score.py with a tiny random regressor (tests; the scores mean nothing)."""
from configs import refine_tiny
from configs import score


def get_config():
  config = score.get_config()
  config.regressor = refine_tiny.get_config().regressor
  config.batch_size = 4
  return config
