"""SAMPOT on LiteMedSAM with boxes: the Montgomery test split, rough boxes, every baseline.

    python main.py --config configs/lite_medsam_evaluate.py --workdir runs/lite_J0.15 \
        --config.box_jitter=0.15

The regressor is the shipped left-lung one (`--config.regressor.name=lite_medsam_lung_right`
with `--config.data.target=right`); `--config.regressor.workdir=DIR` uses one you trained with
configs/lite_medsam_regressor.py.

The initial prompt is a rough box (the ground-truth box with each coordinate moved uniformly by
up to box_jitter of its width/height; numpy default_rng(box_seed), one draw of 4 per image in id
order); its 4 corners are searched (a population of 16 boxes, then Adam) on the regressor
trained on LiteMedSAM's own masks (configs/lite_medsam_regressor.py). Baselines: the IoU head's choice among the multimask
outputs, the same ascent on the IoU head, a random search with as many decoder calls, the
true-Dice ascent (the bound), and the ground-truth box.
"""
from configs import evolve
from sampot_jax.runtime import settings


def get_config():
  config = evolve.get_config()
  config.sam = settings.block(settings.Sam(checkpoint_dir="checkpoints/lite_medsam",
                                           variant="lite_medsam"))
  config.regressor = settings.block(settings.Regressor(name="lite_medsam_lung_left"))
  config.prompt = "box"
  config.box_jitter = 0.15
  config.evolve.learning_rate = 3.0  # pixels of the original image per Adam step
  config.evolve.restart_jitter = 3.0
  config.baselines.box_methods = True
  # A rough box is meant to move a lot: the click rules (the mask keeps half its overlap, the
  # box's centre stays on the first mask) rejected exactly the large gains at J = 0.15 and
  # prevented no degradation (docs/sampot.md). Boxes are accepted when the score rose and
  # LiteMedSAM's IoU head did not fall: on a site the regressor never saw (Shenzhen) it scored
  # good masks low and climbed away from them, and the IoU head disagreed (docs/compare.md, the
  # safeguard chosen on the Shenzhen and JSRT val splits).
  config.safeguards.rules = ("score_gain", "iou_agrees")
  config.safeguards.max_iou_drop = 0.02
  # The search, at <= 32 decoder evaluations per image, chosen on the val split among SAMPOT and
  # its peers (docs/compare.md): 16 boxes around the rough one (each coordinate within 0.1 x
  # its width/height), then 5 Adam steps from the best: 16 + 6 x 2.51 = 31 evaluations (an Adam
  # step costs 2.51 forward passes on CPU). SAMPOT alone (the paper's: Adam only) is
  # --config.evolve.population=0 --config.evolve.num_steps=30.
  config.evolve.population = 16
  config.evolve.population_jitter = 0.1
  config.evolve.num_steps = 5
  # The best box is chosen by 0.7 x regressor + 0.3 x LiteMedSAM's IoU head: they err apart on
  # LiteMedSAM's masks, and the blend orders one image's masks best. 0.3 is the weight the
  # regressor run chooses on the val split (its regressor_eval.json, model_made.iou_weight). Adam
  # ascends the regressor alone: the IoU head misled the ascent from far-off boxes
  # (docs/sampot.md, J = 0.15).
  config.evolve.iou_weight = 0.3
  config.evolve.ascend_blend = False
  return config
