"""SAMPOT on LiteMedSAM with boxes: the Montgomery test split, rough boxes, every baseline.

    python main.py --config configs/lite_medsam_evaluate.py --workdir runs/lite_J0.15 \
        --config.box_jitter=0.15 --config.regressor.workdir=runs/lite_regressor

The initial prompt is a rough box (the ground-truth box with each coordinate moved uniformly by
up to box_jitter of its width/height; numpy default_rng(box_seed), one draw of 4 per image in id
order); SAMPOT moves its 4 corners by Adam on the regressor trained on LiteMedSAM's own masks
(configs/lite_medsam_regressor.py). Baselines: the IoU head's choice among the multimask
outputs, the same ascent on the IoU head, a random search with as many decoder calls, the
true-Dice ascent (the bound), and the ground-truth box.
"""
from configs import evolve
from sampot_jax import defaults


def get_config():
  config = evolve.get_config()
  config.sam = defaults.sam("lite_medsam", "checkpoints/lite_medsam")
  config.regressor.workdir = "runs/lite_regressor"
  config.prompt = "box"
  config.box_jitter = 0.15
  config.evolve.num_steps = 30
  config.evolve.learning_rate = 3.0  # pixels of the original image per Adam step
  config.evolve.restart_jitter = 3.0
  config.baselines.box_methods = True
  return config
