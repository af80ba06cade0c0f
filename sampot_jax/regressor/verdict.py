"""Should SAMPOT use this regressor? A verdict on held-out images, beside the model's IoU head.

    found = run(config, workdir, scorer, test_candidates, where)   # all of it, written
    # or by parts:
    runs = sampot_runs(sam, scorer, images, targets, boxes, settings, safeguard_config, 8)
    found = judge(made, runs, where)                # made: evaluation.model_made(...)
    write(workdir, found)                           # verdict.json, verdict.md

Two things are measured on the held-out (test) images:
- the score, on the model's own masks of rough boxes (evaluation.model_made): Pearson r with the
  true Dice, r where Dice >= 0.8 (the band SAMPOT moves in), the median within-image Spearman
  (SAMPOT keeps one image's best-scored mask, so order within an image is what counts); for the
  regressor, the IoU head and the blend SAMPOT ranks by;
- SAMPOT itself: rough boxes (the evaluate task's draw: J = verdict.box_jitter, seed
  verdict.box_seed, at verdict.image_size as the evaluate configs), SAMPOT with this regressor (config.evolve; the evolved box kept when
  config.safeguards pass, as refine keeps it) and the same ascent on the IoU head alone
  (objective 'iou', what a user without a regressor can run): mean Dice, images improved, images
  made worse by more than DEGRADED.

The sentence: use it when SAMPOT with it raises the mean Dice, makes at most MAX_DEGRADED_SHARE
of the images worse by more than DEGRADED, and is not behind the IoU-head ascent by more than
TIE; otherwise it says which of these failed and what to do instead.
"""
import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np

from absl import logging

from sampot_jax.regressor import candidate_sets
from sampot_jax.regressor import evaluation
from sampot_jax.runtime import settings as settings_lib
from sampot_jax.runtime import sharding
from sampot_jax.sam import frozen
from sampot_jax.sam import predictor
from sampot_jax.sampot import evolve
from sampot_jax.sampot import metrics
from sampot_jax.sampot import prompts as prompt_lib
from sampot_jax.sampot import safeguards
from sampot_jax.sampot.scorer import Scorer
from sampot_jax.storage import files

DEGRADED = 0.02  # a Dice loss larger than this counts as making an image worse
MAX_DEGRADED_SHARE = 0.05
TIE = 0.005  # mean Dice within this of the IoU-head ascent counts as level with it


def sampot_runs(sam: frozen.Sam, scorer: Scorer, images: np.ndarray, targets: np.ndarray,
                boxes: np.ndarray, settings: evolve.Settings, safeguard_config, batch_size: int,
                seed: int = 0, iou_ascent: bool = True) -> dict:
  """SAMPOT and the IoU-head ascent from `boxes`, batch by batch (the last one padded).

  Args:
    images: (N, S, S) uint8; targets: (N, S, S) bool; boxes: (N, 4) float32 pixels.
    settings: SAMPOT's evolve.Settings; safeguard_config: config.safeguards.

  Returns:
    {'initial', 'sampot', 'evolved'[, 'iou_ascent']: (N,) true Dice; 'accepted': (N,) bool}.
    'sampot' is the box refine keeps (evolved when the safeguards pass, else the initial).
  """
  key = jax.random.key(seed)
  parts = []
  for start in range(0, len(images), batch_size):
    rows = slice(start, start + batch_size)
    host, n = sharding.pad_batch(dict(images=images[rows], boxes=boxes[rows]), batch_size)
    embeddings, frame = predictor.encode_images(sam.params, host["images"], sam.config)
    work = evolve.Batch(embeddings, frame, host["images"].astype(np.float32) / 255.0,
                        host["boxes"])
    rng = jax.random.fold_in(key, start)
    res = evolve.evolve_prompts(sam, scorer, work, settings, rng=rng)
    out = {k: np.asarray(getattr(res, k))[:n] for k in
           ("initial_mask", "best_mask", "initial_score", "best_score", "best_prompt",
            "initial_iou", "best_iou")}
    if iou_ascent:
      iou = evolve.evolve_prompts(sam, scorer, work,
                                  dataclasses.replace(settings, objective="iou"), rng=rng)
      out["iou_mask"] = np.asarray(iou.best_mask)[:n]
    parts.append(out)
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  passed = safeguards.check(safeguard_config, out["initial_score"], out["best_score"],
                            out["initial_mask"], out["best_mask"], out["best_prompt"],
                            out["initial_iou"], out["best_iou"])
  accepted = safeguards.accept(passed, len(images))
  dice = {"initial": metrics.dice_rows(out["initial_mask"], targets),
          "evolved": metrics.dice_rows(out["best_mask"], targets)}
  dice["sampot"] = np.where(accepted, dice["evolved"], dice["initial"])
  if iou_ascent:
    dice["iou_ascent"] = metrics.dice_rows(out["iou_mask"], targets)
  return dict(dice, accepted=accepted)


def _outcome(initial: np.ndarray, after: np.ndarray) -> dict:
  delta = after - initial
  return {"mean_dice": float(after.mean()), "mean_gain": float(delta.mean()),
          "improved": int((delta > 0).sum()), "degraded": int((delta < -DEGRADED).sum()),
          "improved_share": float((delta > 0).mean()),
          "degraded_share": float((delta < -DEGRADED).mean())}


def judge(made: dict, runs: dict, where: str = "") -> dict:
  """The verdict: the score table, SAMPOT's outcomes, a yes/no and its sentence.

  Args:
    made: evaluation.model_made of the held-out images (regressor, iou_head, blend).
    runs: sampot_runs' output. where: how a user points SAMPOT at this regressor.
  """
  initial = runs["initial"]
  n = len(initial)
  sampot = _outcome(initial, runs["sampot"])
  iou = _outcome(initial, runs["iou_ascent"]) if "iou_ascent" in runs else None
  start = float(initial.mean())
  said = (f"On {n} held-out images SAMPOT with this regressor took the mean Dice of rough boxes "
          f"from {start:.3f} to {sampot['mean_dice']:.3f}, improved {sampot['improved']} and made "
          f"{sampot['degraded']} worse by more than {DEGRADED}")
  if iou is not None:
    said += f"; the same ascent on the model's IoU head reached {iou['mean_dice']:.3f}"
  said += "."
  if sampot["mean_gain"] <= 0:
    use, why = False, ("it does not raise the mean Dice: keep the boxes as drawn, or train it on "
                       "more (or more typical) labelled images.")
  elif sampot["degraded_share"] > MAX_DEGRADED_SHARE:
    use, why = False, (f"it makes over {MAX_DEGRADED_SHARE:.0%} of the images worse: not safe to "
                       "run unattended; train it on more labelled images of this kind, or check "
                       "each refined mask.")
  elif iou is not None and sampot["mean_dice"] < iou["mean_dice"] - TIE:
    use, why = False, ("the IoU head alone does better: refine with "
                       "--config.evolve.objective=iou instead.")
  else:
    use, why = True, f"SAMPOT should use it{(': ' + where) if where else ''}."
  return {"use": use, "sentence": f"{said} {'Yes' if use else 'No'}: {why}",
          "images": n, "initial_mean_dice": start, "sampot": sampot, "iou_ascent": iou,
          "accepted": int(np.asarray(runs["accepted"]).sum()), "score": made}


def markdown(found: dict) -> str:
  """verdict.md: the table and the sentence."""
  def f(x):
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"

  score, n = found["score"], found["images"]
  lines = ["# Verdict: should SAMPOT use this regressor?", "", f"**{found['sentence']}**", "",
           f"Score on the model's masks of rough boxes ({score.get('n', 0)} masks, "
           f"{score.get('n_band', 0)} with Dice >= 0.8); SAMPOT from rough boxes on {n} images "
           f"(initial mean Dice {found['initial_mean_dice']:.3f}):", "",
           "| score | r | r (Dice >= 0.8) | median within-image Spearman | top-1 regret median / mean | "
           "SAMPOT mean Dice | mean gain | improved | worse by > 0.02 |",
           "|---|---|---|---|---|---|---|---|---|"]
  rows = [("regressor", "regressor", found["sampot"]), ("IoU head", "iou_head",
                                                       found["iou_ascent"])]
  if "blend" in score:
    rows.insert(1, (f"blend (IoU weight {score['iou_weight']:.1f})", "blend", None))
  for label, key, run in rows:
    s = score.get(key, {})
    cells = [f(s.get("pearson_r")), f(s.get("band_pearson_r")),
             f(s.get("median_within_image_spearman")),
             f"{f(s.get('median_top1_regret'))} / {f(s.get('mean_top1_regret'))}"]
    if run is None:
      cells += ["", "", "", ""]
    else:
      cells += [f(run["mean_dice"]), f"{run['mean_gain']:+.3f}",
                f"{run['improved']} ({run['improved_share']:.0%})",
                f"{run['degraded']} ({run['degraded_share']:.0%})"]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  weight = found.get("iou_weight")
  ranked = ("" if weight is None else " ranked by the regressor alone" if weight == 0 else
            f" ranked by the blend with IoU weight {weight:g}")
  lines += ["", f"SAMPOT's row: the box refine keeps{ranked} (the evolved one when the safeguards "
            "pass); the IoU head's: the same ascent with the model's IoU prediction as the "
            "objective.", ""]
  return "\n".join(lines)


def write(workdir: Path, found: dict) -> dict:
  files.write_json(Path(workdir) / "verdict.json", found)
  files.write_text(Path(workdir) / "verdict.md", markdown(found))
  return found


def run(config, workdir: Path, scorer: Scorer, test_candidates, where: str = "",
        iou_weight: float | None = None) -> dict | None:
  """The verdict of `scorer` on the first config.verdict.images test images of config.data;
  None when that is 0.

  Args:
    config: a regressor config (data, sam, evolve, safeguards, verdict).
    test_candidates: the test split's CandidateSet; its model-made masks of the images SAMPOT
      refines give the score table (the blend with config.evolve.iou_weight, as SAMPOT ranks).
    where: how a user points SAMPOT at this regressor (in the sentence).
    iou_weight: the blend weight chosen on the val split (evaluation.choose_iou_weight), used
      instead of config.evolve.iou_weight (and named in the sentence when it differs); None:
      the config's.
  """
  from sampot_jax import data  # pylint: disable=g-import-not-at-top  # TFDS only when needed
  block = settings_lib.typed(settings_lib.Verdict, config.verdict, "config.verdict")
  if block.images == 0:
    return None
  settings = evolve.settings_from_config(config.evolve)
  if iou_weight is not None and iou_weight != settings.iou_weight:
    settings = dataclasses.replace(settings, iou_weight=float(iou_weight))
    where += f" --config.evolve.iou_weight={iou_weight:g} (chosen on the val split)"
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.image_size = block.image_size
  lungs = data.load_split(data_config, "test")
  n = min(block.images, len(lungs.ids))
  ids, images = list(lungs.ids[:n]), lungs.images[:n]
  # The score table on the masks of the images SAMPOT refines (the candidates' first images).
  if list(test_candidates.ids[:n]) != ids[:len(test_candidates.ids)]:
    raise ValueError("the test candidates were built on other images than the test split's.")
  made_set = candidate_sets.select(test_candidates, (test_candidates.kinds == "model_box")
                                   & (test_candidates.image_index < n))
  predict = evaluation.make_predict(scorer.model, config.eval_batch_size)
  pred = evaluation.predict_candidates(predict, scorer.variables, made_set)
  made = evaluation.model_made(pred, made_set, iou_weight=settings.iou_weight or None)
  targets = lungs.target(config.data.target)[:n]
  boxes = prompt_lib.rough_boxes(prompt_lib.bounding_boxes(targets, ids), block.box_jitter,
                                 np.random.default_rng(block.box_seed), images.shape[1:3])
  sam = frozen.from_config(config.sam)
  logging.info("Verdict: SAMPOT%s on %d test images.", " and the IoU-head ascent"
               if block.iou_ascent else "", n)
  runs = sampot_runs(sam, scorer, images, targets, boxes, settings, config.safeguards,
                     block.batch_size, seed=config.seed, iou_ascent=block.iou_ascent)
  found = judge(made, runs, where)
  found.update(ids=ids, box_jitter=block.box_jitter, box_seed=block.box_seed,
               iou_weight=settings.iou_weight,
               dice={k: runs[k].tolist() for k in runs if k != "accepted"})
  write(workdir, found)
  logging.info("%s", found["sentence"])
  return found
