"""Train the Dice regressor (task 'train_regressor'): candidates, training (resumable), the
trained regressor and its evaluation.

    python main.py --config configs/train_regressor.py --workdir W

WORKDIR/candidates/ (cached masks with known Dice), checkpoints/ (resumable), the trained
regressor (regressor.store), metrics.json, the evaluation (regressor.evaluation), the verdict
(regressor.verdict: should SAMPOT use it?) when the config has one, splits.csv when the data
folder has none (the seeded split the run used).
"""
import time

from absl import logging
import ml_collections
import numpy as np

from sampot_jax.data import pipeline
from sampot_jax.data import splits as splits_lib
from sampot_jax.regressor import candidate_sets
from sampot_jax.regressor import evaluation
from sampot_jax.regressor import resume
from sampot_jax.regressor import store
from sampot_jax.regressor import train
from sampot_jax.regressor import verdict
from sampot_jax.storage import files
from sampot_jax.tasks import common


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Builds candidates, trains (or resumes), evaluates; returns metrics."""
  train.check_config(config)
  workdir = common.start(config, workdir)
  # Other settings than the checkpoints' stop here, before config.json is rewritten.
  resume.check_settings(workdir.resolve() / "checkpoints", config)
  files.write_json(workdir / "config.json", config.to_dict())
  derived = pipeline.split_table(config.data)
  if derived is not None:
    splits_lib.write_splits_csv(workdir / "splits.csv", *derived)
    logging.info("%s has no splits.csv: the seeded split (data.split_seed=%d) is in %s.",
                 config.data.dir, config.data.split_seed, workdir / "splits.csv")
  t0 = time.time()  # This call's wall clock; train_seconds spans resumes.
  # A few labelled images (train_images > 0): nothing held out, the val split is not read.
  used = ("train", "test") if config.train_images else ("train", "val", "test")
  sets = {split: candidate_sets.load_or_build_candidates(config, workdir, split)
          for split in used}
  candidate_seconds = time.time() - t0

  state = train.train(config, workdir, sets["train"], sets.get("val"))
  best = {"params": state["best_params"],
          "batch_stats": state["best_batch_stats"]}
  store.save(workdir, config, best)

  t1 = time.time()
  report = evaluation.evaluate_and_write(config, best, sets, workdir)
  eval_seconds = time.time() - t1
  found = None
  if "verdict" in config:
    t1 = time.time()
    found = verdict.run(config, workdir, store.load(workdir), sets["test"],
                        where=f"--config.regressor.workdir={workdir}",
                        iou_weight=report["model_made"].get("iou_weight"))
    verdict_seconds = time.time() - t1

  epochs = int(state["epoch"])
  history = [{"epoch": e + 1, "train_loss": float(state["train_loss"][e]),
              "val_loss": float(state["val_loss"][e]),
              "seconds": float(state["seconds"][e])} for e in range(epochs)]
  summary = {
      "epochs_run": epochs, "best_epoch": int(state["best_epoch"]) + 1,
      "best_val_loss": float(state["best_val_loss"]),
      "train_seconds": float(np.nansum(np.asarray(state["seconds"]))),
      "candidate_seconds": candidate_seconds, "eval_seconds": eval_seconds,
      "run_seconds": time.time() - t0,
      "num_candidates": {k: len(v) for k, v in sets.items()},
      "num_images": {k: len(v.ids) for k, v in sets.items()},
      # Bad examples left out when each split was read (config.data.on_bad_example='skip').
      "skipped_examples": {k: {"count": len(v.skipped),
                               "examples": [{"file": f, "problem": p} for f, p in v.skipped]}
                           for k, v in sets.items()},
      "test_pearson_r": report["by_kind"]["all"]["regressor"]["pearson_r"],
      "test_mae": report["by_kind"]["all"]["regressor"]["mae"],
      "sweep_median_spearman_rho": report["sweeps"]["median_spearman_rho"],
      "all_targets_pass": report["all_targets_pass"],
      "history": history,
  }
  if found is not None:
    summary.update(verdict_use=found["use"], verdict=found["sentence"],
                   verdict_seconds=verdict_seconds)
  files.write_json(workdir / "metrics.json", summary)
  skipped = {k: v["count"] for k, v in summary["skipped_examples"].items() if v["count"]}
  if skipped:
    logging.warning("Bad examples skipped per split: %s (listed in %s).", skipped,
                    workdir / "metrics.json")
  logging.info("test r %.4f  MAE %.4f  sweep rho %.3f  targets %s",
               summary["test_pearson_r"], summary["test_mae"],
               summary["sweep_median_spearman_rho"],
               "PASS" if report["all_targets_pass"] else "FAIL")
  return summary
