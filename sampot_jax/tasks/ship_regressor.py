"""The ship_regressor task (configs/ship_regressor.py): a train_regressor workdir's regressor
written into the package as NAME.npz + NAME.json (regressor/shipped.py), float16 only where its
predictions on the workdir's test candidates match float32's within config.float16_tolerance."""
import json
from pathlib import Path
import subprocess

from absl import logging
import jax
import numpy as np

from sampot_jax import errors
from sampot_jax.regressor import candidate_sets
from sampot_jax.regressor import evaluation
from sampot_jax.regressor import shipped
from sampot_jax.regressor import store


def _commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).parent).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def float16_check(workdir: Path, scorer) -> dict:
  """Predictions with float16-rounded weights against float32 on the workdir's test candidates:
  {'candidates', 'max_abs_diff', 'same_best_per_image' (share of images whose best-scored
  candidate is the same)}."""
  parts = sorted((workdir / "candidates").glob("test_*.npz"))
  if not parts:
    raise errors.MissingInputError(f"{workdir / 'candidates'} holds no test candidates "
                                   "(test_*.npz) to check float16 on; ship float32 "
                                   "(--config.dtype=float32) or rerun train_regressor there.")
  cands = candidate_sets.concat([candidate_sets.CandidateSet.load(p) for p in parts])
  predict = evaluation.make_predict(scorer.model, 64)
  full = evaluation.predict_candidates(predict, scorer.variables, cands)
  half = jax.tree.map(lambda a: np.asarray(a).astype(np.float16).astype(np.float32),
                      scorer.variables)
  rounded = evaluation.predict_candidates(predict, half, cands)
  same = [np.argmax(full[cands.image_index == i]) == np.argmax(rounded[cands.image_index == i])
          for i in np.unique(cands.image_index)]
  return {"candidates": len(cands), "max_abs_diff": float(np.max(np.abs(full - rounded))),
          "same_best_per_image": float(np.mean(same))}


def run(config, workdir):
  """main.py entry: ship the regressor trained in `workdir` as config.name."""
  if not config.name:
    raise errors.ConfigError("Name the shipped regressor: --config.name=NAME "
                             "(e.g. lite_medsam_lung_left).")
  if not workdir:
    raise errors.ConfigError("--workdir must be the train_regressor workdir to ship.")
  workdir = Path(workdir).expanduser().resolve()
  scorer = store.load(workdir)
  made = store.config_of(workdir)
  run_config = json.loads((workdir / "config.json").read_text())
  learned = made.get("sam_variant")
  if learned is None and run_config.get("candidates", {}).get("model_boxes", 0) > 0:
    learned = run_config["sam"]["variant"]  # workdirs saved before the config said it
  metrics = json.loads((workdir / "metrics.json").read_text())
  trained = {"command": config.command, "summary": config.summary, "tables": config.tables,
             "commit": _commit(),
             **{k: metrics.get(k) for k in ("epochs_run", "best_epoch", "best_val_loss",
                                            "train_seconds", "candidate_seconds")}}
  check = float16_check(workdir, scorer)
  logging.info("float16 weights vs float32 on %d test candidates: max |diff| %.2e, same best "
               "candidate on %.1f%% of images.", check["candidates"], check["max_abs_diff"],
               100 * check["same_best_per_image"])
  if config.dtype == "float16" and (check["max_abs_diff"] > config.float16_tolerance
                                    or check["same_best_per_image"] < 1.0):
    raise errors.ConfigError(
        f"float16 weights change the predictions by up to {check['max_abs_diff']:.4f} "
        f"(config.float16_tolerance={config.float16_tolerance}) or the best candidate of "
        f"{100 * (1 - check['same_best_per_image']):.1f}% of images: ship float32 "
        "(--config.dtype=float32).")
  trained["float16_vs_float32"] = check
  card = shipped.write(config.name, {"model": made["model"], "data": made["data"],
                                     "sam_variant": learned, "trained": trained},
                       scorer.variables, config.dtype,
                       config.out or None)
  print(json.dumps({k: v for k, v in card.items() if k != "arrays"}, indent=1))
