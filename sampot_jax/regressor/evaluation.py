"""How well a trained regressor predicts Dice: its evaluation on the test split.

    predict = make_predict(model, batch_size)
    pred = predict_candidates(predict, variables, test_set)
    by_kind = evaluate_predictions(pred, atlas_pred, test_set, failure_kinds)

Besides Pearson r / MAE / bias per candidate kind (and against the atlas, a
baseline that sees no image), two checks closer to what SAMPOT needs: the
per-image ranking of erode/dilate sweeps, and whole-anatomy mistakes (the
other lung, both lungs) that must not outrank better masks.
"""
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
from scipy import ndimage
from scipy import stats

from sampot_jax.regressor import candidate_sets
from sampot_jax.regressor import candidates
from sampot_jax.regressor import model as regressor
from sampot_jax.regressor.candidate_sets import CandidateSet
from sampot_jax.report import figures
from sampot_jax.sampot import metrics
from sampot_jax.sampot import scorer as scorer_lib
from sampot_jax.storage import files


def make_predict(model: regressor.DiceRegressor, batch_size: int):
  """predict(variables, cands, indices=None) -> (K,) float32, eval mode."""
  apply = jax.jit(regressor.make_scorer(model))

  def predict(variables, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """images, masks: (K, S, S) float32 -> (K,) predicted Dice."""
    k = images.shape[0]
    out = np.empty((k,), np.float32)
    for start in range(0, k, batch_size):
      stop = min(start + batch_size, k)
      im, ma = images[start:stop], masks[start:stop]
      pad = batch_size - (stop - start)
      if pad:  # Fixed shape: one compilation for every batch.
        im = np.concatenate([im, np.zeros((pad,) + im.shape[1:], im.dtype)])
        ma = np.concatenate([ma, np.zeros((pad,) + ma.shape[1:], ma.dtype)])
      out[start:stop] = np.asarray(apply(variables, im, ma))[:stop - start]
    return out

  return predict


def predict_candidates(predict, variables, cands: CandidateSet,
                       chunk: int = 512) -> np.ndarray:
  """Predicted Dice of every candidate, (M,) float32."""
  out = []
  for start in range(0, len(cands), chunk):
    idx = np.arange(start, min(start + chunk, len(cands)))
    images, masks, _ = candidate_sets.batch(cands, idx)
    out.append(predict(variables, images, masks))
  return np.concatenate(out)


def sweep_masks(target: np.ndarray, offsets) -> np.ndarray:
  """Erosions (offset < 0) and dilations (> 0) of a mask by |offset| pixels.

  Thresholds the signed Euclidean distance map (negative inside). Returns
  (len(offsets), S, S) bool; offset 0 is the mask itself.
  """
  inside = ndimage.distance_transform_edt(target)
  outside = ndimage.distance_transform_edt(~target)
  signed = np.where(target, -inside + 0.5, outside - 0.5)
  return np.stack([signed <= t for t in offsets])


def sweep_spearman(predict, variables, test_set: CandidateSet,
                   offsets) -> dict:
  """Per-image Spearman rho between predicted and true Dice on sweeps."""
  rhos = []
  for i in range(len(test_set.ids)):
    masks = sweep_masks(test_set.targets[i], offsets)
    true = np.array([metrics.dice(m, test_set.targets[i]) for m in masks])
    images = np.repeat(test_set.images[i][None].astype(np.float32) / 255.0,
                       len(masks), axis=0)
    pred = predict(variables, images, masks.astype(np.float32))
    rho = stats.spearmanr(pred, true).statistic
    rhos.append(float(rho))
  rhos = np.asarray(rhos)
  return {"offsets_px": list(offsets), "num_images": int(rhos.size),
          "median_spearman_rho": float(np.nanmedian(rhos)),
          "min_spearman_rho": float(np.nanmin(rhos)),
          "per_image": dict(zip(test_set.ids.tolist(), rhos.tolist()))}


def anatomy_checks(predict, variables, test_set: CandidateSet,
                   offsets) -> dict:
  """Scores of whole-anatomy mistakes SAM makes: the other lung instead of
  the target, or both lungs at once.

  Per check: true and predicted Dice (mean, min, max), bias = mean(pred -
  true), and `outranks_better_sweep`: over images, the mean share of the
  erode/dilate sweep masks with a higher true Dice that score below the
  mistake (0 is right; SAMPOT would prefer the mistake over those). {} when
  the data has no other lungs.
  """
  out = {}
  rows = np.nonzero(test_set.others.any(axis=(1, 2)))[0]
  if not rows.size:
    return out
  names = ("other_lung_only", "both_lungs")
  true = {n: [] for n in names}
  pred = {n: [] for n in names}
  outranks = {n: [] for n in names}
  for i in rows:
    target, other = test_set.targets[i], test_set.others[i]
    sweep = sweep_masks(target, offsets)
    mistakes = np.stack([other, target | other])
    masks = np.concatenate([sweep, mistakes])
    images = np.repeat(test_set.images[i][None].astype(np.float32) / 255.0,
                       len(masks), axis=0)
    scores = predict(variables, images, masks.astype(np.float32))
    sweep_true = np.array([metrics.dice(m, target) for m in sweep])
    for k, name in enumerate(names):
      t = metrics.dice(mistakes[k], target)
      s = scores[len(sweep) + k]
      true[name].append(t)
      pred[name].append(s)
      better = sweep_true > t
      outranks[name].append(float(np.mean(scores[:len(sweep)][better] < s)))
  for name in names:
    t, p = np.asarray(true[name]), np.asarray(pred[name])
    out[name] = {"n": int(t.size), "true_mean": float(t.mean()),
                 "true_min": float(t.min()), "true_max": float(t.max()),
                 "pred_mean": float(p.mean()), "pred_min": float(p.min()),
                 "pred_max": float(p.max()), "bias": float(np.mean(p - t)),
                 "outranks_better_sweep": float(np.mean(outranks[name]))}
  return out


def evaluate_predictions(pred: np.ndarray, atlas_pred: np.ndarray,
                    cands: CandidateSet, failure_kinds) -> dict:
  """Agreement of regressor and atlas with true Dice, overall and per kind."""
  groups = {"all": np.ones(len(cands), bool),
            "failure_modes": np.isin(cands.kinds, list(failure_kinds)),
            # The band SAMPOT moves in: telling good masks from very good.
            "true_dice>=0.8": cands.dice >= 0.8}
  for kind in sorted(set(cands.kinds.tolist())):
    groups[kind] = cands.kinds == kind
  out = {}
  for name, sel in groups.items():
    if not sel.any():
      continue
    true = cands.dice[sel]
    out[name] = {
        "n": int(sel.sum()),
        "dice_min": float(true.min()), "dice_max": float(true.max()),
        "dice_mean": float(true.mean()), "dice_std": float(true.std()),
        "regressor": metrics.agreement(pred[sel], true),
        "atlas": metrics.agreement(atlas_pred[sel], true),
    }
  return out


def model_made(pred: np.ndarray, cands: CandidateSet, kind: str = "model_box",
               iou_weight: float | None = None) -> dict:
  """The candidates SAMPOT ranks: the model's own masks. Regressor vs the model's IoU head.

  Pearson r / MAE against the true Dice, overall and in the band Dice >= 0.8 (where SAMPOT
  works), and the median over images of the within-image Spearman rho (does the score order
  one image's masks as the true Dice does?), and the top-1 regret (per image, the best mask's
  true Dice minus that of the mask the score ranks first: what keeping the argmax loses; median
  and mean over images). With `iou_weight`, also the blend SAMPOT ranks by with
  evolve.Settings.iou_weight (sampot.scorer.blend). {} when there are none.
  """
  sel = cands.kinds == kind
  if not sel.any():
    return {}
  true, iou, index = cands.dice[sel], cands.model_iou[sel], cands.image_index[sel]
  band = true >= 0.8
  out = {"n": int(sel.sum()), "n_band": int(band.sum()),
         "dice_mean": float(true.mean())}
  scores = [("regressor", pred[sel]), ("iou_head", iou)]
  if iou_weight is not None:
    out["iou_weight"] = float(iou_weight)
    scores.append(("blend", scorer_lib.blend(pred[sel], iou, float(iou_weight))))
  for name, values in scores:
    out[name] = dict(metrics.agreement(values, true),
                     band_pearson_r=metrics.pearson(values[band], true[band]),
                     median_within_image_spearman=_within_image_spearman(values, true, index),
                     **_top1_regret(values, true, index))
  return out


def _top1_regret(values, true, image_index) -> dict:
  """Per image: max true Dice - true Dice of the argmax of `values` (ties: the first); its
  median and mean over images."""
  regrets = []
  for i in np.unique(image_index):
    rows = np.flatnonzero(image_index == i)
    regrets.append(float(true[rows].max() - true[rows[np.argmax(values[rows])]]))
  return {"median_top1_regret": float(np.median(regrets)),
          "mean_top1_regret": float(np.mean(regrets))}


def _within_image_spearman(values, true, image_index) -> float:
  """Median over images (3 or more masks of differing Dice) of Spearman rho(values, true)."""
  rhos = []
  for i in np.unique(image_index):
    rows = image_index == i
    if rows.sum() >= 3 and np.ptp(true[rows]) > 0:
      rhos.append(stats.spearmanr(values[rows], true[rows]).statistic)
  rhos = np.asarray(rhos, np.float64)
  return float(np.nanmedian(rhos)) if rhos.size else float("nan")


IOU_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def choose_iou_weight(pred: np.ndarray, cands: CandidateSet,
                      kind: str = "model_box") -> tuple[float | None, dict]:
  """The blend weight (IOU_WEIGHTS) whose score orders each image's model-made masks best
  (median within-image Spearman), meant for the val split; the smallest among ties.
  -> (weight, {weight: rho}); (None, {}) without model-made masks."""
  sel = cands.kinds == kind
  if not sel.any():
    return None, {}
  true, iou, index = cands.dice[sel], cands.model_iou[sel], cands.image_index[sel]
  rho = {float(w): _within_image_spearman(scorer_lib.blend(pred[sel], iou, w), true, index)
         for w in IOU_WEIGHTS}
  best = max(rho.values())
  return min(w for w, r in rho.items() if r == best), rho


def check_targets(by_kind: dict, sweeps: dict, failure_kinds) -> dict:
  """Issue 3's targets, each with its measured value and pass/fail."""
  def r(group):
    return by_kind.get(group, {}).get("regressor", {}).get("pearson_r",
                                                          float("nan"))
  checks = {
      "all_pearson_r>=0.95": r("all"),
      "all_mae<=0.05": by_kind["all"]["regressor"]["mae"],
      "failure_modes_pearson_r>=0.90": r("failure_modes"),
      "sweep_median_spearman_rho>=0.9": sweeps["median_spearman_rho"],
  }
  for kind in failure_kinds:
    if kind in by_kind:
      checks[f"{kind}_pearson_r>=0.80"] = r(kind)
  out = {}
  for name, value in checks.items():
    bound = float(name.split("=")[-1])
    ok = value <= bound if "<=" in name else value >= bound
    out[name] = {"value": value, "pass": bool(np.isfinite(value) and ok)}
  return out


def markdown_table(report: dict) -> str:
  """regressor_eval.json's figures as a Markdown table (for docs)."""
  def f(x):
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"
  lines = [
      "| candidates | n | true Dice min / max / std | regressor r | "
      "regressor MAE | regressor bias | atlas r | atlas MAE |",
      "|---|---|---|---|---|---|---|---|"]
  for name, g in report["by_kind"].items():
    reg, atl = g["regressor"], g["atlas"]
    lines.append(
        f"| {name} | {g['n']} | {f(g['dice_min'])} / {f(g['dice_max'])} / "
        f"{f(g['dice_std'])} | {f(reg['pearson_r'])} | {f(reg['mae'])} | "
        f"{f(reg['bias'])} | {f(atl['pearson_r'])} | {f(atl['mae'])} |")
  sw = report["sweeps"]
  lines += ["", f"Erode/dilate sweeps ({sw['num_images']} images, offsets "
            f"{sw['offsets_px']} px): median Spearman rho "
            f"{f(sw['median_spearman_rho'])}, min {f(sw['min_spearman_rho'])}.",
            ""]
  if report.get("anatomy"):
    lines += ["| whole-anatomy mask | n | true Dice mean [min, max] | "
              "predicted mean [min, max] | bias | outranks better sweep masks |",
              "|---|---|---|---|---|---|"]
    for name, a in report["anatomy"].items():
      lines.append(
          f"| {name} | {a['n']} | {f(a['true_mean'])} [{f(a['true_min'])}, "
          f"{f(a['true_max'])}] | {f(a['pred_mean'])} [{f(a['pred_min'])}, "
          f"{f(a['pred_max'])}] | {f(a['bias'])} | "
          f"{f(a['outranks_better_sweep'])} |")
    lines.append("")
  for split, key in (("test", "model_made"), ("val", "val_model_made")):
    lines += _model_made_table(report.get(key) or {}, split, f)
  lines += ["| target | measured | pass |", "|---|---|---|"]
  for name, t in report["targets"].items():
    lines.append(f"| {name} | {f(t['value'])} | "
                 f"{'yes' if t['pass'] else 'NO'} |")
  return "\n".join(lines) + "\n"


def _model_made_table(made: dict, split: str, f) -> list[str]:
  lines = []
  if made:
    lines += [f"Model-made masks of the {split} split ({made['n']}, {made['n_band']} with Dice "
              ">= 0.8): the regressor against the model's own IoU head"
              + (f", and their blend with iou_weight {made['iou_weight']:.1f} (chosen on the val "
                 "split: evolve.Settings.iou_weight)" if "blend" in made else "") + ".", "",
              "| score | r | MAE | r (Dice >= 0.8) | median within-image Spearman | top-1 regret: "
              "median / mean |", "|---|---|---|---|---|---|"]
    for name in ("regressor", "iou_head", "blend"):
      if name not in made:
        continue
      a = made[name]
      lines.append(f"| {name} | {f(a['pearson_r'])} | {f(a['mae'])} | "
                   f"{f(a['band_pearson_r'])} | {f(a['median_within_image_spearman'])} | "
                   f"{f(a.get('median_top1_regret'))} / {f(a.get('mean_top1_regret'))} |")
    lines.append("")
  return lines


def evaluate_and_write(config: ml_collections.ConfigDict, variables: dict,
                       sets: dict[str, CandidateSet], workdir: Path) -> dict:
  """The whole evaluation of trained `variables` on sets['test'].

  Writes workdir/regressor_eval.json, regressor_eval.md and regressor_scatter.png;
  returns the JSON's content. The atlas baseline is the mean train target.
  """
  workdir = Path(workdir)
  predict = make_predict(regressor.from_config(config.model), config.eval_batch_size)
  test = sets["test"]
  pred = predict_candidates(predict, variables, test)
  atlas_pred = metrics.soft_dice(test.masks, candidate_sets.atlas_of(sets["train"]))
  failure_kinds = tuple(candidates.FAILURE_KINDS)
  by_kind = evaluate_predictions(pred, atlas_pred, test, failure_kinds)
  offsets = tuple(config.sweep_offsets)
  sweeps = sweep_spearman(predict, variables, test, offsets)
  anatomy = anatomy_checks(predict, variables, test, offsets)
  targets = check_targets(by_kind, sweeps, failure_kinds)
  iou_weight, val_rho, val_made = None, {}, {}
  if "val" in sets:  # only the model-made masks are scored
    made = candidate_sets.select(sets["val"], sets["val"].kinds == "model_box")
    if len(made):
      val_pred = predict_candidates(predict, variables, made)
      iou_weight, val_rho = choose_iou_weight(val_pred, made)
      # The same figures on val: where regressors and their settings are compared and chosen.
      val_made = model_made(val_pred, made, iou_weight=iou_weight)
  report = {"split": "test", "num_images": len(test.ids), "num_candidates": len(test),
            "by_kind": by_kind, "sweeps": sweeps, "anatomy": anatomy, "targets": targets,
            "model_made": model_made(pred, test, iou_weight=iou_weight),
            "iou_weight_val_spearman": val_rho, "val_model_made": val_made,
            "all_targets_pass": all(t["pass"] for t in targets.values())}
  files.write_json(workdir / "regressor_eval.json", report)
  report = json.loads((workdir / "regressor_eval.json").read_text())  # NaN -> None, as on disk
  files.write_text(workdir / "regressor_eval.md", markdown_table(report))
  figures.regressor_scatter(workdir / "regressor_scatter.png", pred, atlas_pred, test, by_kind)
  return report
