"""The regressor's predicted Dice of existing masks: a quality check for any segmentation.

  python main.py --config configs/score.py --config.images=PATH --config.masks=MASKS \
      --workdir OUT

Masks are matched to images by name (path relative to their folder, suffix ignored: a.dcm and
a.png match); foreground is where a mask exceeds half its maximum. Writes OUT/scores.csv
(file, mask, size, mask pixels, predicted Dice) and OUT/summary.json (docs/refine.md).
"""
import ml_collections

from sampot_jax.runtime import settings


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "score"
  config.images = ""  # a folder of images, or one image file
  config.masks = ""   # a folder of masks (or one file), named as the images
  config.on_bad_example = "error"  # 'error' | 'skip' (logged, listed in summary.json)
  config.batch_size = 8
  # A label map's structure (pixels equal to it); None: two-valued masks, foreground over half
  # the maximum. A mask with three or more labels and no label given is refused.
  config.label = ml_collections.config_dict.placeholder(int)

  # The shipped left-lung regressor; --config.regressor.workdir=DIR uses one you trained.
  config.regressor = settings.block(settings.Regressor(name="lite_medsam_lung_left"))
  return config
