"""SAMPOT on the Montgomery test split, as in the paper (sections 3.3, 3.4).

  python main.py --config configs/evolve.py --workdir runs/sampot

Needs a ported SAM checkpoint (config.sam.checkpoint_dir; the run stops with the
commands that fetch and port it when it is missing) and a trained regressor
(config.regressor.workdir, from configs/regressor_paper.py). Baselines: SAM's
multimask choice only; configs/evaluate.py adds the grid search and the oracle.
"""
import ml_collections

from sampot_jax.runtime import settings


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "evaluate"
  config.seed = 0

  # SAM sees the team set at its native 512 x 512 (the regressor resizes to its own 256 inside);
  # Dice and clicks are in these pixels.
  config.data = settings.block(settings.Data(image_size=512))
  config.split = "test"
  config.max_images = 0  # 0 = the whole split
  config.prompt = "click"  # 'click' (the paper) | 'box'
  # CSV id,x,y (clicks) or id,x0,y0,x1,y1 (boxes) in pixels of the evaluated images
  # (data.image_size); empty: the ground-truth stand-ins (sampot_jax.sampot.prompts).
  config.prompts_file = ""
  config.box_jitter = 0.15  # rough boxes: each coordinate moved by up to this x width/height
  config.box_seed = 0

  config.sam = settings.block(settings.Sam())  # vit_b, the paper's model
  # A train_regressor workdir; SAMPOT uses the coord variant by default (docs/regressor.md):
  #   python main.py --config configs/train_regressor_coord.py --workdir runs/regressor
  config.regressor = settings.block(settings.Regressor(workdir="runs/regressor"))
  config.evolve = settings.block(settings.Evolve())  # the paper's values where it gives them
  config.safeguards = settings.block(settings.Safeguards())
  # Several processes (hosts): the batches sharded over all their devices (docs/refine.md).
  config.distributed = settings.block(settings.Distributed())
  config.baselines = settings.block(settings.Baselines())

  config.figures = ml_collections.ConfigDict()
  config.figures.heatmap_id = ""     # Fig. 1 image; empty: the first
  config.figures.trajectory_id = ""  # Fig. 5 image; empty: the one that gained most

  config.batch_size = 8          # images per compiled call (rounded to the device count)
  config.encode_batch_size = 8
  config.embedding_cache_dir = ""  # empty: $SAMPOT_CACHE/embeddings (~/.cache/sampot_jax)
  return config
