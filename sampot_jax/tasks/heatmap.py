"""The paper's Fig. 1 for a few images (task 'heatmap'): the true Dice, the score and SAM's
IoU of SAM's mask for every click of a fine grid.

    python main.py --config configs/heatmap.py --workdir W

WORKDIR/heatmap_<id>.png and .npz (clicks, dice, score, iou) for each image.
"""
from absl import logging
import numpy as np
from tqdm import tqdm

from sampot_jax import errors
from sampot_jax.report import figures
from sampot_jax.sampot import baselines
from sampot_jax.sampot import evolve
from sampot_jax.storage import files
from sampot_jax.tasks import common
from sampot_jax.tasks import evaluate


def run(config, workdir) -> list[str]:
  """Task 'heatmap': Fig. 1 on a config.heatmap.grid_size grid for config.heatmap.ids."""
  workdir = common.start(config, workdir)
  sam = common.load_sam(config)
  scorer = common.load_scorer(config, check_target=True)
  ids, images, targets, prompts = evaluate.load_inputs(config)
  wanted = list(config.heatmap.ids) or ids[:config.heatmap.num_images]
  unknown = [sid for sid in wanted if sid not in ids]
  if unknown:
    raise errors.ConfigError(f"config.heatmap.ids names {unknown}, not in split {config.split!r} "
                     f"(e.g. {ids[:3]}).")
  rows = [ids.index(sid) for sid in wanted]
  embeddings, frame, _ = evaluate.embed(config, sam, images[rows])
  n = config.heatmap.grid_size
  grid = baselines.grid_clicks(frame.original_size, n)
  slope = evolve.settings_from_config(config.evolve).slope
  written = []
  for j, (sid, i) in enumerate(tqdm(list(zip(wanted, rows)), desc="heat maps", unit="image")):
    score, iou, dice = (np.asarray(x[0]) for x in baselines.grid_maps(
        sam, scorer, embeddings[j:j + 1], frame,
        images[i:i + 1].astype(np.float32) / 255.0, targets[i:i + 1], grid, slope,
        config.baselines.grid_chunk))
    name = f"heatmap_{sid}"
    files.write_npz(workdir / f"{name}.npz", dict(clicks=grid, dice=dice, score=score, iou=iou))
    figures.dice_heatmap(workdir / f"{name}.png", images[i], targets[i], dice.reshape(n, n),
                         grid, prompts[i], title=f"{sid}: Dice over {n}x{n} click positions")
    written.append(f"{name}.png")
  logging.info("Wrote %s to %s", written, workdir)
  return written
