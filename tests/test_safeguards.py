"""The safeguard rules do what safeguards.py documents, one rule at a time and together."""
import numpy as np
import pytest

from sampot_jax.runtime import settings
from sampot_jax.sampot import safeguards


def box(y0, y1, x0, x1, size=20):
  mask = np.zeros((size, size), bool)
  mask[y0:y1, x0:x1] = True
  return mask


# Four images: 0 a fine move, 1 a mask that left the initial region, 2 a click that
# left the initial mask while the mask stayed, 3 no score gain (and a NaN case below).
INITIAL = np.stack([box(5, 15, 5, 15)] * 4)
BEST = np.stack([box(6, 15, 5, 15), box(0, 4, 16, 20), box(5, 15, 5, 16), box(5, 15, 5, 15)])
CLICKS = np.array([[10.0, 10.0], [18.0, 2.0], [15.4, 10.0], [10.0, 10.0]])
INITIAL_SCORE = np.array([0.5, 0.5, 0.5, 0.5])
BEST_SCORE = np.array([0.6, 0.9, 0.55, 0.5])


def config(**kw):
  c = settings.block(settings.Safeguards())
  c.update(kw)
  return c


def test_each_rule_as_documented():
  passed = safeguards.check(config(), INITIAL_SCORE, BEST_SCORE, INITIAL, BEST, CLICKS)
  assert list(passed) == ["score_gain", "mask_overlap", "click_inside"]
  # score gain must exceed the margin (0): image 3 gained nothing.
  np.testing.assert_array_equal(passed["score_gain"], [True, True, True, False])
  # Dice(best, initial) >= 0.5: image 1's mask left the initial region.
  np.testing.assert_array_equal(passed["mask_overlap"], [True, False, True, True])
  # Nearest pixel of the click inside the initial mask: (15.4, 10) rounds to column 15,
  # outside the box's columns 5..14; (18, 2) is outside too.
  np.testing.assert_array_equal(passed["click_inside"], [True, False, False, True])
  np.testing.assert_array_equal(safeguards.accept(passed, 4), [True, False, False, False])


def test_iou_agrees_reads_the_iou_head():
  initial_iou = np.array([0.8, 0.8, 0.8, np.nan])
  best_iou = np.array([0.9, 0.79, 0.7, 0.9])
  passed = safeguards.check(config(rules=("iou_agrees",)), INITIAL_SCORE, BEST_SCORE, INITIAL,
                            BEST, CLICKS, initial_iou, best_iou)
  # The IoU head must not fall (a NaN fails); max_iou_drop = 0.05 forgives image 1's 0.01.
  np.testing.assert_array_equal(passed["iou_agrees"], [True, False, False, False])
  passed = safeguards.check(config(rules=("iou_agrees",), max_iou_drop=0.05), INITIAL_SCORE,
                            BEST_SCORE, INITIAL, BEST, CLICKS, initial_iou, best_iou)
  np.testing.assert_array_equal(passed["iou_agrees"], [True, True, False, False])
  with pytest.raises(ValueError, match="iou_agrees needs initial_iou"):
    safeguards.check(config(rules=("iou_agrees",)), INITIAL_SCORE, BEST_SCORE, INITIAL, BEST,
                     CLICKS)


def test_thresholds_and_switching_rules_off():
  passed = safeguards.check(config(min_score_gain=0.08, rules=("score_gain",)),
                            INITIAL_SCORE, BEST_SCORE, INITIAL, BEST, CLICKS)
  assert list(passed) == ["score_gain"]
  np.testing.assert_array_equal(passed["score_gain"], [True, True, False, False])
  none = safeguards.check(config(rules=()), INITIAL_SCORE, BEST_SCORE, INITIAL, BEST, CLICKS)
  assert none == {}
  np.testing.assert_array_equal(safeguards.accept(none, 4), [True] * 4)
  strict = safeguards.check(config(min_mask_dice=0.99), INITIAL_SCORE, BEST_SCORE, INITIAL,
                            BEST, CLICKS)
  # Dice of a 9-row box with the 10-row box is 18/19 < 0.99.
  np.testing.assert_array_equal(strict["mask_overlap"], [False, False, False, True])


def test_nan_scores_fail_the_score_rule():
  passed = safeguards.check(config(), np.array([0.5, np.nan, 0.5, 0.5]),
                            np.array([np.nan, 0.9, 0.6, 0.6]), INITIAL, BEST, CLICKS)
  np.testing.assert_array_equal(passed["score_gain"], [False, False, True, True])


def test_report_counts_prevented_degradations_and_forgone_gains():
  passed = {"score_gain": np.array([True, True, False, False]),
            "mask_overlap": np.array([True, False, True, False])}
  dice_initial = np.array([0.8, 0.8, 0.8, 0.8])
  dice_evolved = np.array([0.9, 0.3, 0.85, 0.8])
  rep = safeguards.report(passed, dice_initial, dice_evolved)
  assert rep["score_gain"] == {"rejected": 2, "degradations_prevented": 0, "gains_given_up": 1,
                               "dice_loss_prevented": 0.0,
                               "dice_gain_given_up": pytest.approx(0.05)}
  assert rep["mask_overlap"]["degradations_prevented"] == 1
  assert rep["mask_overlap"]["dice_loss_prevented"] == pytest.approx(0.5)
  assert rep["mask_overlap"]["gains_given_up"] == 0
  assert rep["all"]["rejected"] == 3
  assert rep["all"]["degradations_prevented"] == 1 and rep["all"]["gains_given_up"] == 1


def test_bad_config_and_shapes_are_refused():
  with pytest.raises(ValueError, match="unknown field"):
    safeguards.check(config(min_gain=0.1), INITIAL_SCORE, BEST_SCORE, INITIAL, BEST, CLICKS)
  with pytest.raises(ValueError, match=r"names \['inside'\]"):
    safeguards.check(config(rules=("inside",)), INITIAL_SCORE, BEST_SCORE, INITIAL, BEST,
                     CLICKS)
  with pytest.raises(ValueError, match="same 4 images"):
    safeguards.check(config(), INITIAL_SCORE, BEST_SCORE, INITIAL, BEST[:3], CLICKS)
