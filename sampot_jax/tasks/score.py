"""The regressor as a quality check of existing masks (task 'score').

    python main.py --config configs/score.py --config.images=PATH --config.masks=MASKS \
        --workdir OUT

Each mask in config.masks is matched to the image of the same name (path relative to its
folder, suffix ignored) in config.images; OUT/scores.csv holds the regressor's predicted Dice
of each, OUT/summary.json the counts and the skipped inputs.
"""
from pathlib import Path
import time

from absl import logging
import jax
import numpy as np
from tqdm import tqdm

from sampot_jax import errors
from sampot_jax.data import images as images_lib
from sampot_jax.storage import files
from sampot_jax.tasks import common

SCORE_COLUMNS = ("file", "mask", "width", "height", "intensity", "mask_pixels", "score")


def run(config, workdir) -> dict:
  """Task 'score': predicted Dice of each mask in config.masks for the image of the same name
  (path relative to its folder, suffix ignored) in config.images -> scores.csv, summary.json."""
  return common.run_locked(config, workdir, _run)


def _run(config, workdir: Path, mode: str) -> dict:
  t_start = time.time()
  if not config.images or not config.masks:
    raise errors.ConfigError("give the images and their masks: --config.images=PATH "
                     "--config.masks=PATH (masks matched by file name)")
  common.check_apart(workdir, images=config.images, masks=config.masks)
  masks_root = Path(config.masks).expanduser()
  found = images_lib.list_images(config.images, exclude=[workdir, masks_root])
  found_masks = images_lib.list_images(masks_root, exclude=[workdir])
  problems = []
  image_keys, mask_keys = {}, {}
  for table, keys in ((found, image_keys), (found_masks, mask_keys)):
    for name in table:
      keys.setdefault(common.output_name(name), []).append(name)
  pairs = []
  for key, names in sorted(image_keys.items()):
    if len(names) > 1:
      problems += [errors.BadInputError(n, line=None, reason=f"images {names} share the name {key!r}; a mask "
                                 "cannot say which it belongs to") for n in names]
    elif key not in mask_keys:
      problems.append(errors.BadInputError(names[0], line=None, reason=f"no mask named {key}.* in config.masks"))
    elif len(mask_keys[key]) > 1:
      problems.append(errors.BadInputError(names[0], line=None, reason=f"several masks {mask_keys[key]} match it"))
    else:
      pairs.append((names[0], mask_keys[key][0]))
  for key, names in sorted(mask_keys.items()):
    if key not in image_keys:
      problems += [errors.BadInputError(n, line=None, reason=f"a mask without an image named {key}.* in "
                                 "config.images", source="masks") for n in names]
  common.settle(problems, mode)
  scorer = common.load_scorer(config)
  side = scorer.resolution
  batch = max(1, int(config.batch_size))
  predict = jax.jit(scorer.fn)
  rows, pending = [], []

  def flush():
    if not pending:
      return
    n = len(pending)
    images_ = np.zeros((batch, side, side), np.float32)
    masks_ = np.zeros((batch, side, side), np.float32)
    for i, (_, image_small, mask_small) in enumerate(pending):
      images_[i], masks_[i] = image_small, mask_small
    scores = np.asarray(predict(scorer.variables, images_, masks_))[:n]  # one program: full batches
    for (row, _, _), s in zip(pending, scores):
      row["score"] = float(s)
      rows.append(row)
    pending.clear()

  for name, mask_name in tqdm(pairs, desc="score", unit="image"):
    try:
      image = images_lib.read_image(found[name])
      mask = images_lib.read_mask(found_masks[mask_name], config.label)
      if mask.shape != image.size:
        raise errors.BadInputError(
            found_masks[mask_name], f"the mask is {mask.shape[1]}x{mask.shape[0]} (W x H) but "
            f"the image {name} is {image.size[1]}x{image.size[0]}")
    except errors.BadInputError as e:
      problem = errors.BadInputError(name, line=None, reason=str(e))
      if mode == "error":
        raise errors.BadInputsError([problem]) from e
      logging.warning("Skipping %s", problem)
      problems.append(problem)
      continue
    row = {"file": name, "mask": mask_name, "width": image.size[1], "height": image.size[0],
           "intensity": image.intensity, "mask_pixels": int(mask.sum())}
    pending.append((row, images_lib.to_square(image.gray, side),
                    images_lib.to_square(mask.astype(np.float32), side)))
    if len(pending) == batch:
      flush()
  flush()
  # Always this run's rows: a rerun that scores nothing leaves no older scores behind.
  common.write_csv(workdir / "scores.csv", rows,
                   fields=SCORE_COLUMNS)
  summary = {"task": "score", "images": str(config.images), "masks": str(config.masks),
             "scored": len(rows), "skipped": len(problems),
             "bad_inputs": [p.record() for p in common.sort_problems(problems)],
             "mean_score": float(np.mean([r["score"] for r in rows])) if rows else None,
             "regressor_side": side, "seconds": time.time() - t_start,
             "config": config.to_dict()}
  files.write_json(workdir / "summary.json", summary)
  logging.info("score: %d mask(s) scored (mean predicted Dice %s), %d skipped. %s",
               len(rows), summary["mean_score"], len(problems), workdir / "scores.csv")
  return summary
