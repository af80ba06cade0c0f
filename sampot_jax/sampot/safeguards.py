"""Safeguards: keep the evolved prompt only when it passes acceptance rules.

The paper's catastrophic cases are evolved masks that leave the lung although the
initial one was right (Fig. 6). Three rules; `config.rules` names those in force:

  score_gain    best_score - initial_score > min_score_gain (a NaN score fails)
  mask_overlap  Dice(evolved mask, initial mask) >= min_mask_dice
  click_inside  the evolved click (a box: its centre) falls on a pixel of the initial
                mask (nearest pixel centre: round(x), round(y), halves to even)

The evolved prompt is accepted when every enabled rule passes; otherwise the
initial prompt is kept. `report` says, per rule, how many degradations it
prevented (it rejected an evolved mask of lower true Dice) and how many gains it
gave up (it rejected one of higher true Dice).
"""

import numpy as np

from sampot_jax.runtime import settings
from sampot_jax.sam import predictor
from sampot_jax.sampot import metrics

RULES = settings.SAFEGUARD_RULES


def enabled_rules(config) -> tuple[str, ...]:
  """The rules in force, in RULES order; unknown names or fields are errors."""
  config = settings.typed(settings.Safeguards, config, "config.safeguards")
  return tuple(rule for rule in RULES if rule in config.rules)


def check(config, initial_score, best_score, initial_masks, best_masks,
          best_prompts) -> dict[str, np.ndarray]:
  """Each enabled rule's verdict per image.

  Args:
    config: config.safeguards (runtime.settings.Safeguards).
    initial_score, best_score: (N,) float regressor scores.
    initial_masks, best_masks: (N, H, W) bool at the original size.
    best_prompts: (N, D) original pixels (predictor.PROMPT_KINDS).

  Returns:
    {rule: (N,) bool, True = passes}, enabled rules only.
  """
  initial_masks = np.asarray(initial_masks, bool)
  best_masks = np.asarray(best_masks, bool)
  n = initial_masks.shape[0]
  if best_masks.shape != initial_masks.shape or np.shape(best_prompts)[0] != n:
    raise ValueError(f"safeguards.check: masks {initial_masks.shape} / {best_masks.shape} and "
                     f"prompts {np.shape(best_prompts)} must describe the same {n} images.")
  passed = {}
  rules = enabled_rules(config)
  config = settings.typed(settings.Safeguards, config, "config.safeguards")
  for rule in rules:
    if rule == "score_gain":
      gain = np.asarray(best_score, np.float64) - np.asarray(initial_score, np.float64)
      passed[rule] = np.nan_to_num(gain, nan=-np.inf) > config.min_score_gain
    elif rule == "mask_overlap":
      overlap = metrics.dice_rows(initial_masks, best_masks)
      passed[rule] = overlap >= config.min_mask_dice
    else:
      x, y = predictor.click_pixels(predictor.prompt_anchor(best_prompts),
                                    initial_masks.shape[1:])
      passed[rule] = initial_masks[np.arange(n), y, x]
  return passed


def accept(passed: dict[str, np.ndarray], n: int) -> np.ndarray:
  """(N,) bool: every rule passed (all True when no rule is enabled)."""
  verdict = np.ones(n, bool)
  for ok in passed.values():
    verdict &= ok
  return verdict


def report(passed: dict[str, np.ndarray], dice_initial, dice_evolved) -> dict:
  """Per rule and for all rules together: what rejecting cost and saved, in true Dice.

  Returns {rule or 'all': {rejected, degradations_prevented, gains_given_up,
  dice_loss_prevented (sum of initial - evolved over rejected degradations),
  dice_gain_given_up (sum of evolved - initial over rejected gains)}}.
  """
  dice_initial = np.asarray(dice_initial, np.float64)
  dice_evolved = np.asarray(dice_evolved, np.float64)
  delta = dice_evolved - dice_initial
  rows = dict(passed)
  rows["all"] = accept(passed, delta.shape[0])
  out = {}
  for name, ok in rows.items():
    rejected = ~np.asarray(ok, bool)
    worse, better = rejected & (delta < 0), rejected & (delta > 0)
    out[name] = {"rejected": int(rejected.sum()),
                 "degradations_prevented": int(worse.sum()),
                 "gains_given_up": int(better.sum()),
                 "dice_loss_prevented": float(np.abs(delta[worse]).sum()),
                 "dice_gain_given_up": float(delta[better].sum())}
  return out
