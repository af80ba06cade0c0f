"""SAMPOT on the Montgomery test split, as in the paper (sections 3.3, 3.4).

  python main.py --config configs/evolve.py --workdir runs/sampot

Needs a ported SAM checkpoint (config.sam.checkpoint_dir; the run stops with the
commands that fetch and port it when it is missing) and a trained regressor
(config.regressor.workdir, from configs/train_regressor.py). Baselines: SAM's
multimask choice only; configs/evaluate.py adds the grid search and the oracle.
"""
import ml_collections

from sampot_jax.runtime import defaults


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "evaluate"
  config.seed = 0

  config.data = defaults.data()
  config.data.dir = "../shared/data/montgomery"
  # SAM sees the team set at its native 512 x 512 (the regressor resizes to its own 256 inside);
  # Dice and clicks are in these pixels.
  config.data.image_size = 512
  config.split = "test"
  config.max_images = 0  # 0 = the whole split
  config.prompt = "click"  # 'click' (the paper) | 'box'
  # CSV id,x,y (clicks) or id,x0,y0,x1,y1 (boxes) in pixels of the evaluated images
  # (data.image_size); empty: the ground-truth stand-ins (sampot_jax.sampot.prompts).
  config.prompts_file = ""
  config.box_jitter = 0.15  # rough boxes: each coordinate moved by up to this x width/height
  config.box_seed = 0

  config.sam = defaults.sam("vit_b", "checkpoints/sam_vit_b")  # the paper's model
  config.regressor = ml_collections.ConfigDict()
  # A train_regressor workdir; SAMPOT uses the coord variant by default (docs/regressor.md):
  #   python main.py --config configs/train_regressor_coord.py --workdir runs/regressor
  config.regressor.workdir = "runs/regressor"
  config.regressor.random_init = False
  config.regressor.model = ml_collections.ConfigDict()  # random models only
  config.regressor.seed = 0

  config.evolve = ml_collections.ConfigDict()
  config.evolve.num_steps = 40       # not given by the paper
  config.evolve.learning_rate = 10.0  # paper: step size 10 (pixels)
  config.evolve.weight_decay = 0.0    # paper: zero
  config.evolve.slope = 5.0           # paper: "a steeper slope", value not given
  config.evolve.num_starts = 1        # paper: the user's click only
  config.evolve.restart_jitter = 10.0
  config.evolve.seed = 0
  config.evolve.num_snapshots = 4     # masks kept along the trajectory (Fig. 5)
  config.evolve.iou_weight = 0.0      # paper: the regressor alone (evolve.blend)
  config.evolve.ascend_blend = True   # False: ascend the regressor, choose by the blend

  config.safeguards = defaults.safeguards()

  config.baselines = ml_collections.ConfigDict()
  config.baselines.grid_size = 0   # n x n grid clicks for search + oracle; 0 = off
  config.baselines.grid_chunk = 16  # grid clicks decoded together per image
  # Box prompts: SAM's IoU as the objective, the true-Dice bound, a random search over
  # num_steps + 1 boxes (each coordinate moved by up to search_jitter x size), the GT box.
  config.baselines.box_methods = False
  config.baselines.search_jitter = 0.1

  config.figures = ml_collections.ConfigDict()
  config.figures.heatmap_id = ""     # Fig. 1 image; empty: the first
  config.figures.trajectory_id = ""  # Fig. 5 image; empty: the one that gained most

  config.batch_size = 8          # images per compiled call (rounded to the device count)
  config.encode_batch_size = 8
  config.embedding_cache_dir = ""  # empty: $SAMPOT_CACHE/embeddings (~/.cache/sampot_jax)
  return config
