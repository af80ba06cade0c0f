"""Safeguards: keep the evolved prompt only when it passes acceptance rules.

The paper's catastrophic cases are evolved masks that leave the lung although the
initial one was right (Fig. 6). Three rules, each switched off by None/False:

  score_gain    best_score - initial_score > min_score_gain (a NaN score fails)
  mask_overlap  Dice(evolved mask, initial mask) >= min_mask_dice
  click_inside  the evolved click falls on a pixel of the initial mask
                (nearest pixel centre: round(x), round(y))

The evolved prompt is accepted when every enabled rule passes; otherwise the
initial prompt is kept. `report` says, per rule, how many degradations it
prevented (it rejected an evolved mask of lower true Dice) and how many gains it
gave up (it rejected one of higher true Dice).
"""
import ml_collections
import numpy as np

from sampot_jax import candidates

RULES = ("score_gain", "mask_overlap", "click_inside")


def default_config() -> ml_collections.ConfigDict:
  """The rules' thresholds; None (or False) switches a rule off."""
  config = ml_collections.ConfigDict()
  config.min_score_gain = ml_collections.config_dict.placeholder(float)
  config.min_score_gain = 0.0
  config.min_mask_dice = ml_collections.config_dict.placeholder(float)
  config.min_mask_dice = 0.5
  config.click_inside_initial_mask = True
  return config


def enabled_rules(config) -> tuple[str, ...]:
  """The rules a config switches on, in RULES order."""
  on = {"score_gain": config.get("min_score_gain") is not None,
        "mask_overlap": config.get("min_mask_dice") is not None,
        "click_inside": bool(config.get("click_inside_initial_mask"))}
  unknown = sorted(set(config.keys()) - {"min_score_gain", "min_mask_dice",
                                         "click_inside_initial_mask"})
  if unknown:
    raise ValueError(f"config.safeguards has unknown field(s) {unknown}; known: "
                     "min_score_gain, min_mask_dice, click_inside_initial_mask.")
  return tuple(rule for rule in RULES if on[rule])


def check(config, initial_score, best_score, initial_masks, best_masks,
          best_clicks) -> dict[str, np.ndarray]:
  """Each enabled rule's verdict per image.

  Args:
    config: see default_config.
    initial_score, best_score: (N,) float regressor scores.
    initial_masks, best_masks: (N, H, W) bool at the original size.
    best_clicks: (N, 2) (x, y) original pixels.

  Returns:
    {rule: (N,) bool, True = passes}, enabled rules only.
  """
  initial_masks = np.asarray(initial_masks, bool)
  best_masks = np.asarray(best_masks, bool)
  n = initial_masks.shape[0]
  if best_masks.shape != initial_masks.shape or np.shape(best_clicks) != (n, 2):
    raise ValueError(f"safeguards.check: masks {initial_masks.shape} / {best_masks.shape} and "
                     f"clicks {np.shape(best_clicks)} must describe the same {n} images.")
  passed = {}
  for rule in enabled_rules(config):
    if rule == "score_gain":
      gain = np.asarray(best_score, np.float64) - np.asarray(initial_score, np.float64)
      passed[rule] = np.nan_to_num(gain, nan=-np.inf) > config.min_score_gain
    elif rule == "mask_overlap":
      overlap = np.array([candidates.dice(a, b) for a, b in zip(initial_masks, best_masks)])
      passed[rule] = overlap >= config.min_mask_dice
    else:
      h, w = initial_masks.shape[1:]
      clicks = np.asarray(best_clicks, np.float64)
      x = np.clip(np.rint(clicks[:, 0]), 0, w - 1).astype(int)
      y = np.clip(np.rint(clicks[:, 1]), 0, h - 1).astype(int)
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
