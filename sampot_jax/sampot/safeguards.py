"""Safeguards: keep the evolved prompt only when it passes acceptance rules.

The paper's catastrophic cases are evolved masks that leave the lung although the
initial one was right (Fig. 6). Four rules; `config.rules` names those in force:

  score_gain    best_score - initial_score > min_score_gain (a NaN score fails)
  mask_overlap  Dice(evolved mask, initial mask) >= min_mask_dice
  click_inside  the evolved click (a box: its centre) falls on a pixel of the initial
                mask (nearest pixel centre: round(x), round(y), halves to even)
  iou_agrees    best_iou >= initial_iou - max_iou_drop: the model's own IoU head does not
                contradict the regressor. On a site whose annotations the regressor never saw
                it can score a good mask low and climb away from it; the IoU head, trained on
                other data, errs elsewhere (docs/compare.md, "A safeguard for new sites").

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


def check(config, initial_score, best_score, initial_masks, best_masks, best_prompts,
          initial_iou=None, best_iou=None) -> dict[str, np.ndarray]:
  """Each enabled rule's verdict per image: verdicts(config, measure(...)).

  Args:
    config: config.safeguards (runtime.settings.Safeguards).
    initial_score, best_score: (N,) float regressor scores.
    initial_masks, best_masks: (N, H, W) bool at the original size.
    best_prompts: (N, D) original pixels (predictor.PROMPT_KINDS).
    initial_iou, best_iou: (N,) the model's IoU predictions; needed by iou_agrees only.

  Returns:
    {rule: (N,) bool, True = passes}, enabled rules only.
  """
  rules = enabled_rules(config)
  return verdicts(config, measure(rules, initial_score, best_score, initial_masks, best_masks,
                                  best_prompts, initial_iou, best_iou))


def measure(rules, initial_score, best_score, initial_masks, best_masks, best_prompts,
            initial_iou=None, best_iou=None) -> dict[str, np.ndarray]:
  """What each rule of `rules` compares with its threshold, (N,) float64 per rule: score_gain
  the score's gain, mask_overlap Dice(initial, best mask), iou_agrees the IoU head's drop
  (initial - best), click_inside 1.0 inside / 0.0 outside. Arguments as check's."""
  initial_masks = np.asarray(initial_masks, bool)
  best_masks = np.asarray(best_masks, bool)
  n = initial_masks.shape[0]
  if best_masks.shape != initial_masks.shape or np.shape(best_prompts)[0] != n:
    raise ValueError(f"safeguards.check: masks {initial_masks.shape} / {best_masks.shape} and "
                     f"prompts {np.shape(best_prompts)} must describe the same {n} images.")
  out = {}
  for rule in rules:
    if rule == "score_gain":
      out[rule] = np.asarray(best_score, np.float64) - np.asarray(initial_score, np.float64)
    elif rule == "mask_overlap":
      out[rule] = metrics.dice_rows(initial_masks, best_masks).astype(np.float64)
    elif rule == "iou_agrees":
      if initial_iou is None or best_iou is None:
        raise ValueError("safeguards.check: the rule iou_agrees needs initial_iou and best_iou, "
                         "the model's IoU predictions of both masks.")
      out[rule] = np.asarray(initial_iou, np.float64) - np.asarray(best_iou, np.float64)
    else:
      x, y = predictor.click_pixels(predictor.prompt_anchor(best_prompts),
                                    initial_masks.shape[1:])
      out[rule] = initial_masks[np.arange(n), y, x].astype(np.float64)
  return out


def verdicts(config, measured: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{rule: (N,) measure} -> {rule: (N,) bool, True = passes} by config's thresholds (a NaN
  fails every rule)."""
  config = settings.typed(settings.Safeguards, config, "config.safeguards")
  threshold = {"score_gain": lambda v: v > config.min_score_gain,
               "mask_overlap": lambda v: v >= config.min_mask_dice,
               "iou_agrees": lambda v: v <= config.max_iou_drop,
               "click_inside": lambda v: v > 0.5}
  return {rule: threshold[rule](np.asarray(v, np.float64)) & ~np.isnan(v)
          for rule, v in measured.items()}


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
