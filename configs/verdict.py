"""Should SAMPOT use a regressor on your labelled images? A verdict without training.

    python main.py --config configs/verdict.py --workdir runs/verdict_shenzhen \
        --config.data.dir=../shared/data/shenzhen --config.regressor.name=lite_medsam_lung_left

The regressor: a shipped one (--config.regressor.name, default lite_medsam_lung_left) or one you
trained (--config.regressor.workdir=DIR); its target must be --config.data.target. The data: a
labelled folder as configs/train_regressor.py reads it; the first config.verdict.images images
of its test split are judged (a splits.csv naming every image 'test' judges them all). Writes
WORKDIR/verdict.md (the table and the sentence) and verdict.json.
"""
from configs import train_regressor
from sampot_jax.runtime import settings


def get_config():
  config = train_regressor.get_config()
  config.task = "verdict"
  config.regressor = settings.block(settings.Regressor(name="lite_medsam_lung_left"))
  return config
