"""verdict.py in seconds: train_regressor_tiny's settings (set --config.data.dir and
--config.regressor.workdir to a regressor trained with them)."""
from configs import train_regressor_tiny
from sampot_jax.runtime import settings


def get_config():
  config = train_regressor_tiny.get_config()
  config.task = "verdict"
  config.regressor = settings.block(settings.Regressor())
  return config
