"""The improved oracle: coordinate channels, wider, Dice-preserving jitter.

What leakage needs the network to see: a left-lung mask spilling into the
right lung or outside the body is wrong because of WHERE it lies, so x/y
channels (CoordConv) give every filter the position; wider late layers hold
more shape; shift/gamma jitter (Dice unchanged) fights over-fitting to
46 training subjects.

python main.py --config configs/train_regressor_coord.py \
  --config.data.dir=../shared/data/montgomery --workdir /tmp/reg_runs/coord
"""
from configs import regressor_paper


def get_config():
  config = regressor_paper.get_config()
  config.model.coord_channels = True
  config.model.features = (16, 32, 64, 128, 128)
  config.augment.enabled = True
  return config
