"""Choosing a safeguard: one method's moves from compare runs, judged under a grid of rules.

    python -m sampot_jax.sampot.safeguard_choice runs/gval_montgomery runs/gval_shenzhen \
        --method hybrid --budget 32

Reads each run's per_image.csv (tasks/compare.py: the scores of the rough and the kept box's
masks, their parts and overlap) and prints, for each safeguard setting of the grid, the mean
Dice, the share of images improved and the share degraded by > 0.02 (against the rough box) had
the method kept its move only where the rules passed (sampot.safeguards.verdicts), then the
setting `choose` picks. Nothing is decoded again: the rules read what the run recorded. Choose
on val runs, the regressor's own site first; the test split is run once with the setting
chosen.
"""
import argparse
import itertools
from pathlib import Path

import numpy as np

from sampot_jax.runtime import settings
from sampot_jax.sampot import safeguards
from sampot_jax.storage import files

DEGRADED = 0.02  # as tasks/compare.py
# The grid: the score's margin, the IoU head's largest drop (None: rule off), the smallest
# overlap of the kept mask with the rough box's (None: rule off).
SCORE_GAINS = (0.0, 0.01, 0.02, 0.03, 0.05)
IOU_DROPS = (None, 0.02, 0.01, 0.0, -0.01)
OVERLAPS = (None, 0.7)


def moves(rows: list[dict], method: str, budget: int) -> dict:
  """per_image.csv rows -> {dice_rough, dice_kept, draw (N,), and the measures score_gain,
  iou_agrees (the IoU drop), mask_overlap (N,)} of `method`'s moves at `budget`."""
  initial = {(r["draw"], r["jitter"], r["id"]): float(r["dice"]) for r in rows
             if r["method"] == "initial" and int(r["budget"]) == budget}
  mine = [r for r in rows if r["method"] == method and int(r["budget"]) == budget]
  if not mine:
    raise ValueError(f"no rows of method {method!r} at budget {budget}; the run compared "
                     f"{sorted({r['method'] for r in rows})} at "
                     f"{sorted({int(r['budget']) for r in rows})}.")
  if any(r["score_kept"] == "" for r in mine):
    raise ValueError(f"{method} keeps a mask that is not its box's own: no scores to judge.")
  f = lambda name: np.array([float(r[name]) for r in mine])
  return {"dice_rough": np.array([initial[r["draw"], r["jitter"], r["id"]] for r in mine]),
          "dice_kept": f("dice"), "draw": np.array([int(r["draw"]) for r in mine]),
          "score_gain": f("score_kept") - f("score_rough"),
          "iou_agrees": f("iou_rough") - f("iou_kept"), "mask_overlap": f("overlap_rough")}


def judge(m: dict, guard: settings.Safeguards) -> dict:
  """The figures had the moves been kept only where `guard`'s rules pass: mean Dice, improved
  and degraded shares (means over draws), the share of moves kept."""
  passed = safeguards.verdicts(guard, {rule: m[rule] for rule in guard.rules})
  accepted = safeguards.accept(passed, len(m["dice_kept"]))
  dice = np.where(accepted, m["dice_kept"], m["dice_rough"])
  per_draw = lambda v: float(np.mean([v[m["draw"] == d].mean() for d in np.unique(m["draw"])]))
  return {"mean_dice": per_draw(dice), "improved": per_draw(dice > m["dice_rough"]),
          "degraded": per_draw(dice < m["dice_rough"] - DEGRADED),
          "accepted": per_draw(accepted.astype(float))}


def grid() -> list[settings.Safeguards]:
  """Every setting of the grid; the first keeps every move (no rule)."""
  out = [settings.Safeguards(rules=())]
  for gain, drop, overlap in itertools.product(SCORE_GAINS, IOU_DROPS, OVERLAPS):
    rules = ("score_gain",) + (() if overlap is None else ("mask_overlap",)) + (
        () if drop is None else ("iou_agrees",))
    out.append(settings.Safeguards(rules=rules, min_score_gain=gain,
                                   max_iou_drop=0.0 if drop is None else drop,
                                   min_mask_dice=0.5 if overlap is None else overlap))
  return out


def label(guard: settings.Safeguards) -> str:
  if not guard.rules:
    return "none"
  parts = [f"gain > {guard.min_score_gain:g}"]
  if "iou_agrees" in guard.rules:
    parts.append(f"IoU drop <= {guard.max_iou_drop:g}")
  if "mask_overlap" in guard.rules:
    parts.append(f"overlap >= {guard.min_mask_dice:g}")
  return ", ".join(parts)


# The choice (docs/compare.md): on the sites the regressor never saw at most this share
# degraded, on its own site at most this loss of mean Dice against keeping every move; among
# those, the highest mean Dice averaged over the runs.
MAX_DEGRADED_NEW_SITE = 0.05
MAX_HOME_COST = 0.005


def choose(found: dict) -> tuple[settings.Safeguards | None, dict]:
  """The grid's setting chosen on val runs {name: moves}, the first run being the regressor's
  own site (its training site's val split), the others new sites -> (setting or None when none
  qualifies, {label: mean over runs of the mean Dice} of those that qualify)."""
  runs = list(found.values())
  home_all = judge(runs[0], settings.Safeguards(rules=()))["mean_dice"]
  ok = {}
  for guard in grid():
    r = [judge(m, guard) for m in runs]
    if (all(x["degraded"] <= MAX_DEGRADED_NEW_SITE for x in r[1:])
        and home_all - r[0]["mean_dice"] <= MAX_HOME_COST):
      ok[guard] = float(np.mean([x["mean_dice"] for x in r]))
  if not ok:
    return None, {}
  best = max(ok, key=lambda g: round(ok[g], 4))  # first of equals: the grid's least strict
  return best, {label(g): v for g, v in ok.items()}


def table(runs: list[Path], method: str, budget: int) -> str:
  """A markdown table: a row per safeguard setting, per run mean Dice / improved / degraded;
  then the setting choose() picks (the first run is the regressor's own site)."""
  found = {run.name: moves(files.read_csv(run / "per_image.csv"), method, budget)
           for run in runs}
  head = ("| safeguard | " + " | ".join(f"{name}: Dice / impr. / degr. / kept" for name in found)
          + " |\n|---|" + "---|" * len(found) + "\n")
  lines = []
  for guard in grid():
    cells = []
    for m in found.values():
      r = judge(m, guard)
      cells.append(f"{r['mean_dice']:.3f} / {r['improved']:.0%} / {r['degraded']:.1%} / "
                   f"{r['accepted']:.0%}")
    lines.append(f"| {label(guard)} | " + " | ".join(cells) + " |\n")
  chosen, _ = choose(found)
  verdict = ("no setting qualifies" if chosen is None else f"chosen: {label(chosen)}")
  return (f"{method} at {budget} decoder evaluations\n\n" + head + "".join(lines)
          + f"\n{verdict} (new sites degraded <= {MAX_DEGRADED_NEW_SITE:.0%}, {runs[0].name} "
          f"losing <= {MAX_HOME_COST} of mean Dice; the highest mean Dice over the runs)\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", type=Path, help="compare workdirs (per_image.csv)")
  parser.add_argument("--method", default="hybrid")
  parser.add_argument("--budget", type=int, default=32)
  args = parser.parse_args(argv)
  print(table(args.runs, args.method, args.budget))


if __name__ == "__main__":
  main()
