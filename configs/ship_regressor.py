"""A trained regressor -> a shipped one (sampot_jax/regressor/weights/NAME.npz + NAME.json).

  python main.py --config configs/ship_regressor.py --workdir runs/lung_left \
      --config.name=lite_medsam_lung_left --config.command="python main.py ..."

WORKDIR is the train_regressor workdir. The weights are stored as float16 when its predictions
on the workdir's test candidates stay within `float16_tolerance` of float32's (and each image's
best-scored mask is the same), else the task stops and says to ship float32.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.task = "ship_regressor"
  config.name = ""          # e.g. lite_medsam_lung_left: --config.regressor.name picks it
  config.dtype = "float16"  # 'float16' | 'float32'
  # Largest |predicted Dice (float16 weights) - predicted Dice (float32)| allowed on the test
  # candidates: a tenth of the regressors' mean absolute error (0.03-0.04, docs/sampot.md).
  config.float16_tolerance = 0.003
  config.command = ""       # the command that trained it (copied to the card)
  config.summary = ""       # one line on what it is for (printed by python -m ...shipped)
  config.tables = "docs/shipped_regressors.md"  # where its measured tables are
  config.out = ""           # the weights folder; empty: the package's own
  return config
