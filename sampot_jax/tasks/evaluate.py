"""Runs a split through SAMPOT and every baseline; writes the report (task 'evaluate').

    python main.py --config configs/evaluate.py --workdir W

Steps: load SAM (ported checkpoint; stops with the porting commands when it is
missing) and the regressor; load the split; initial prompts (GT centroids, rough GT boxes or a
prompts file); embeddings through the cache; then per batch, sharded over the
device mesh, one compiled call each for the evolution, SAM's multimask choice
and the grid maps (search + true-Dice grid); on the host the true Dice, the safeguards
and the report:

  WORKDIR/results.csv          one row per image (prompts, scores, IoUs, Dice per method)
  WORKDIR/summary.json         counts and shares improved/degraded, Dice per method,
                               Pearson r of score and IoU vs Dice, safeguard report
  WORKDIR/trajectories.npz     every start's prompts and scores, the grid maps
  WORKDIR/fig1_dice_heatmap.png, fig4_score_vs_dice.png, fig5_trajectory.png,
  WORKDIR/fig6_initial_vs_evolved.png

tasks/heatmap.py (task 'heatmap') draws Fig. 1 on a fine grid for a few images only.
"""
import dataclasses
import time
from pathlib import Path

from absl import logging
import jax
import numpy as np
from tqdm import tqdm

from sampot_jax import errors
from sampot_jax.data import prompt_csv
from sampot_jax.report import figures
from sampot_jax.runtime import distributed
from sampot_jax.runtime import sharding
from sampot_jax.sam import frozen
from sampot_jax.sam import predictor
from sampot_jax.sampot import baselines
from sampot_jax.sampot import evolve
from sampot_jax.sampot import metrics
from sampot_jax.sampot import prompts as prompt_lib
from sampot_jax.sampot import safeguards
from sampot_jax.sampot.scorer import Scorer
from sampot_jax.storage import files
from sampot_jax.tasks import common

SIGNIFICANT = 0.05  # Dice gain the paper calls significant
METHODS = ("initial", "evolved", "safeguarded", "multimask", "grid_search", "true_dice_grid",
           "iou_ascent", "random_search", "true_dice_ascent", "gt_box")
DEGRADED = 0.02  # a Dice loss larger than this counts as a degradation in the box tables


# ----------------------------------------------------------------------------
# Inputs.


def load_inputs(config):
  """The split, its targets and the initial prompts -> (ids, images uint8, targets bool, prompts).

  Prompts: a prompts file (config.prompts_file: id,x,y clicks or id,x0,y0,x1,y1 boxes;
  data.prompt_csv), else
  the stand-in for a user (sampot_jax.sampot.prompts): the ground-truth centroid for clicks
  (config.prompt == 'click'), a rough box (ground-truth box, each coordinate moved by up to
  config.box_jitter of its width/height, numpy default_rng(config.box_seed), one draw of 4 per
  image in id order) for boxes.
  """
  ids, images, targets, split_ids = common.split_images(config)
  kind = config.prompt
  if kind not in ("click", "box"):
    raise errors.ConfigError(f"config.prompt={kind!r} is not 'click' or 'box'.")
  if config.prompts_file:
    prompts = prompt_csv.prompts_for_ids(config.prompts_file, ids, images.shape[1:3],
                                         split_ids=split_ids)
  elif kind == "click":
    prompts = prompt_lib.centroid_clicks(targets, ids)
  else:
    rng = np.random.default_rng(config.box_seed)
    prompts = prompt_lib.rough_boxes(prompt_lib.bounding_boxes(targets, ids), config.box_jitter,
                                     rng, images.shape[1:3])
  return ids, images, targets, prompts


cache_dir = common.embedding_cache_dir  # moved to common, shared with the compare task


# ----------------------------------------------------------------------------
# The compiled work, batch by batch.


def run_batches(sam: frozen.Sam, scorer: Scorer, embeddings, frame, images_small, targets,
                prompts, config, mesh=None) -> dict:
  """Evolution, multimask and grid maps for every image, sharded over `mesh`.

  Args:
    sam, scorer: the frozen models.
    embeddings: (N, g, g, C); images_small: (N, S, S) float32; targets:
      (N, H, W) bool; prompts: (N, D) float32 (clicks or boxes), all host arrays.
    config: the run's config (evolve, baselines, batch_size, seed).
    mesh: a sharding.batch_mesh(); default all devices.

  Returns:
    Host arrays with a leading N axis (see the keys below).
  """
  mesh = mesh or sharding.batch_mesh()
  sam = dataclasses.replace(sam, params=sharding.replicate(sam.params, mesh))
  scorer = dataclasses.replace(scorer, variables=sharding.replicate(scorer.variables, mesh))
  settings = evolve.settings_from_config(config.evolve)
  grid = (baselines.grid_clicks(frame.original_size, config.baselines.grid_size)
          if config.baselines.grid_size > 0 else None)
  batch = sharding.padded_size(min(config.batch_size, len(prompts)), mesh.size)
  key = jax.random.key(config.seed)
  outputs = []
  for start in tqdm(range(0, len(prompts), batch), desc="SAMPOT batches", unit="batch"):
    rows = slice(start, start + batch)
    host, n = sharding.pad_batch(dict(emb=embeddings[rows], small=images_small[rows],
                                      targets=targets[rows], prompts=prompts[rows]), batch)
    dev = sharding.shard_batch(host, mesh)
    work = evolve.Batch(dev["emb"], frame, dev["small"], dev["prompts"])
    res = evolve.evolve_prompts(sam, scorer, work, settings, rng=jax.random.fold_in(key, start))
    mm_mask, mm_iou, _ = baselines.multimask_choice(sam, dev["emb"], frame, dev["prompts"])
    out = res.fields()
    out.update(multimask_mask=mm_mask, multimask_iou=mm_iou)
    if grid is not None:
      out["grid_score"], out["grid_iou"], out["grid_dice"] = baselines.grid_maps(
          sam, scorer, dev["emb"], frame, dev["small"], dev["targets"], grid, settings.slope,
          config.baselines.grid_chunk)
    if config.baselines.box_methods:
      out.update(baselines.box_methods(sam, scorer, work, dev["targets"], settings,
                                       config.baselines, jax.random.fold_in(key, start)))
    outputs.append(sharding.unpad(sharding.gather(out), n))
  merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  if grid is not None:
    merged["grid_clicks"] = grid
  return merged


# ----------------------------------------------------------------------------
# Host-side verdicts and the report.


def judge(out: dict, targets: np.ndarray, config) -> dict:
  """True Dice of every method, safeguard verdicts, the grid search and the true-Dice grid picks."""
  n = len(targets)
  dice = {"initial": metrics.dice_rows(out["initial_mask"], targets),
          "evolved": metrics.dice_rows(out["best_mask"], targets),
          "multimask": metrics.dice_rows(out["multimask_mask"], targets)}
  passed = safeguards.check(config.safeguards, out["initial_score"], out["best_score"],
                            out["initial_mask"], out["best_mask"], out["best_prompt"],
                            out.get("initial_iou"), out.get("best_iou"))
  accepted = safeguards.accept(passed, n)
  dice["safeguarded"] = np.where(accepted, dice["evolved"], dice["initial"])
  verdict = dict(dice=dice, passed=passed, accepted=accepted,
                 safeguarded_prompt=np.where(accepted[:, None], out["best_prompt"],
                                             out["initial_prompt"]),
                 safeguard_report=safeguards.report(passed, dice["initial"], dice["evolved"]))
  for method in baselines.BOX_METHODS:
    if f"{method}_mask" in out:
      dice[method] = metrics.dice_rows(out[f"{method}_mask"], targets)
  if "random_search_dice" in out:
    dice["random_search"] = out["random_search_dice"]
  if "grid_dice" in out:
    grid = out["grid_clicks"]
    allowed = baselines.inside(out["initial_mask"], grid)
    index, found = baselines.grid_search(out["grid_score"], allowed)
    rows = np.arange(n)
    dice["grid_search"] = np.where(found, out["grid_dice"][rows, np.maximum(index, 0)],
                                   dice["initial"])
    verdict["grid_prompt"] = np.where(found[:, None], grid[np.maximum(index, 0)],
                                      out["initial_prompt"])
    verdict["grid_found"] = found
    best = np.nanargmax(np.where(np.isfinite(out["grid_dice"]), out["grid_dice"], -1), 1)
    dice["true_dice_grid"] = out["grid_dice"][rows, best]
    verdict["true_dice_grid_prompt"] = grid[best]
  return verdict


def compare(before: np.ndarray, after: np.ndarray) -> dict:
  """Counts and shares of images improved / degraded / unchanged (and by > SIGNIFICANT)."""
  delta = after - before
  n = len(delta)
  counts = {"improved": int((delta > 0).sum()), "degraded": int((delta < 0).sum()),
            "unchanged": int((delta == 0).sum()),
            "significantly_improved": int((delta > SIGNIFICANT).sum()),
            "significantly_degraded": int((delta < -SIGNIFICANT).sum()),
            "degraded_by_more_than_0.02": int((delta < -DEGRADED).sum())}
  out = dict(counts)
  out.update({f"{k}_share": v / n for k, v in counts.items()})
  out["mean_dice_change"] = float(delta.mean())
  return out


def results_rows(ids, out, verdict) -> list[dict]:
  """One dict per image for results.csv."""
  dice = verdict["dice"]
  rows = []
  for i, sid in enumerate(ids):
    row = {"id": sid}
    for name, prompt in (("initial", out["initial_prompt"]), ("evolved", out["best_prompt"]),
                         ("safeguarded", verdict["safeguarded_prompt"]),
                         ("grid_search", verdict.get("grid_prompt")),
                         ("true_dice_grid", verdict.get("true_dice_grid_prompt")),
                         *((m, out.get(f"{m}_prompt")) for m in baselines.BOX_METHODS),
                         ("random_search", out.get("random_search_prompt"))):
      if prompt is not None:
        for field, value in zip(predictor.PROMPT_FIELDS[prompt.shape[1]], prompt[i]):
          row[f"{name}_{field}"] = float(value)
    for method in METHODS:
      if method in dice:
        row[f"dice_{method}"] = float(dice[method][i])
    row.update(score_initial=float(out["initial_score"][i]),
               score_evolved=float(out["best_score"][i]),
               iou_initial=float(out["initial_iou"][i]), iou_evolved=float(out["best_iou"][i]),
               iou_multimask=float(out["multimask_iou"][i]),
               accepted=bool(verdict["accepted"][i]))
    for rule, ok in verdict["passed"].items():
      row[f"rule_{rule}"] = bool(ok[i])
    stopped = out["nan_step"][i][out["nan_step"][i] >= 0]
    row.update(best_start=int(out["best_start"][i]), best_step=int(out["best_step"][i]),
               nan_step=int(stopped.min()) if stopped.size else -1)
    rows.append(row)
  return rows


def summarize(ids, out, verdict, config, seconds: dict) -> dict:
  dice = verdict["dice"]
  stopped = np.nonzero((out["nan_step"] >= 0).any(axis=1))[0]
  return {
      "num_images": len(ids),
      "split": config.split,
      "prompt": config.prompt,
      "evolved_vs_initial": compare(dice["initial"], dice["evolved"]),
      "safeguarded_vs_initial": compare(dice["initial"], dice["safeguarded"]),
      "vs_initial": {m: compare(dice["initial"], dice[m]) for m in METHODS
                     if m in dice and m != "initial"},
      "seconds_per_image": {k: v / max(len(ids), 1) for k, v in seconds.items()},
      "dice": {m: {"mean": float(np.mean(dice[m])), "median": float(np.median(dice[m]))}
               for m in METHODS if m in dice},
      "pearson_r_at_initial_clicks": {
          "regressor_score_vs_dice": metrics.pearson(out["initial_score"],
                                                             dice["initial"]),
          "sam_iou_vs_dice": metrics.pearson(out["initial_iou"], dice["initial"]),
      },
      "safeguards": {"rules": dict(config.safeguards),
                     "accepted": int(verdict["accepted"].sum()),
                     "per_rule": verdict["safeguard_report"]},
      "grid_search_without_candidate": (int((~verdict["grid_found"]).sum())
                                        if "grid_found" in verdict else None),
      "nan_stopped": {"images": int(stopped.size), "ids": [ids[i] for i in stopped]},
      "evolve": dict(config.evolve),
      "num_devices": jax.device_count(),
      "seconds": seconds,
  }


def draw_figures(workdir: Path, ids, images, targets, out, verdict, config) -> list[str]:
  """The paper's figures 1, 4, 5, 6 for this run; returns the file names written."""
  dice = verdict["dice"]
  written = []
  pick = lambda name, default: ids.index(name) if name in ids else default
  if "grid_dice" in out:
    i = pick(config.figures.heatmap_id, 0)
    n = config.baselines.grid_size
    figures.dice_heatmap(workdir / "fig1_dice_heatmap.png", images[i], targets[i],
                         out["grid_dice"][i].reshape(n, n), out["grid_clicks"],
                         out["initial_prompt"][i], title=f"{ids[i]}: Dice over click positions")
    written.append("fig1_dice_heatmap.png")
  r = {"score": metrics.pearson(out["initial_score"], dice["initial"]),
       "iou": metrics.pearson(out["initial_iou"], dice["initial"])}
  figures.score_vs_dice(workdir / "fig4_score_vs_dice.png", dice["initial"],
                        out["initial_iou"], out["initial_score"], r["iou"], r["score"])
  written.append("fig4_score_vs_dice.png")
  # Fig. 5 on the image that gained most (or the configured one).
  i = pick(config.figures.trajectory_id, int(np.argmax(dice["evolved"] - dice["initial"])))
  start = int(out["best_start"][i])
  masks = out["snapshot_masks"][i]
  figures.trajectory(workdir / "fig5_trajectory.png", images[i], targets[i],
                     out["prompts"][i, start], out["scores"][i, start],
                     out["snapshot_steps"][i],
                     masks, [metrics.dice(m, targets[i]) for m in masks],
                     title=f"{ids[i]}: Dice {dice['initial'][i]:.3f} -> {dice['evolved'][i]:.3f}")
  written.append("fig5_trajectory.png")
  figures.initial_vs_evolved(workdir / "fig6_initial_vs_evolved.png", dice["initial"],
                             dice["evolved"], dice["safeguarded"], SIGNIFICANT)
  written.append("fig6_initial_vs_evolved.png")
  return written


# ----------------------------------------------------------------------------
# The tasks.


embed = common.embed  # moved to common, shared with the compare task


def run(config, workdir) -> dict:
  """Task 'evaluate': the whole evaluation; returns the summary. Under config.distributed the
  batches are sharded over every process's devices (sharding.batch_mesh) and process 0 writes."""
  distributed.start(config.distributed)
  workdir = common.start(config, workdir)
  files.write_json(workdir / "config.json", config.to_dict())
  t0 = time.time()
  sam = common.load_sam(config)
  scorer = common.load_scorer(config, check_target=True)
  ids, images, targets, prompts = load_inputs(config)
  seconds = {"load": time.time() - t0}
  t0 = time.time()
  embeddings, frame, encoded = embed(config, sam, images)
  seconds["embeddings"] = time.time() - t0
  t0 = time.time()
  small = images.astype(np.float32) / 255.0
  out = run_batches(sam, scorer, embeddings, frame, small, targets, prompts, config)
  seconds["sampot_and_baselines"] = time.time() - t0
  verdict = judge(out, targets, config)
  summary = summarize(ids, out, verdict, config, seconds)
  summary["embeddings_encoded"] = encoded
  if config.prompt == "box":
    summary["box_jitter"] = config.box_jitter
  if jax.process_index() != 0:  # every host computed the same report; one writes it
    return summary
  t0 = time.time()
  written = draw_figures(workdir, ids, images, targets, out, verdict, config)
  seconds["figures"] = time.time() - t0
  common.write_csv(workdir / "results.csv", results_rows(ids, out, verdict))
  arrays = {k: out[k] for k in ("prompts", "scores", "ious", "nan_step", "best_start",
                                "best_step", "grid_clicks", "grid_score", "grid_iou",
                                "grid_dice") if k in out}
  files.write_npz(workdir / "trajectories.npz", dict(ids=np.asarray(ids), **arrays))
  summary["figures"] = written
  files.write_json(workdir / "summary.json", summary)
  ev = summary["evolved_vs_initial"]
  logging.info("%d images: %d improved, %d degraded, %d by > %.2f; mean Dice %.4f -> %.4f "
               "(safeguarded %.4f). Report in %s", len(ids), ev["improved"], ev["degraded"],
               ev["significantly_improved"], SIGNIFICANT, summary["dice"]["initial"]["mean"],
               summary["dice"]["evolved"]["mean"], summary["dice"]["safeguarded"]["mean"],
               workdir)
  return summary
