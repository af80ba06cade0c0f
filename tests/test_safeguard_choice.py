"""safeguard_choice judges a compare run's recorded moves under safeguard settings, as by hand."""
import numpy as np
import pytest

from sampot_jax.sampot import safeguard_choice
from sampot_jax.runtime import settings
from sampot_jax.tasks import common


def rows():
  """Two draws of three images: initial rows and 'hybrid' rows at budget 32 (and 16)."""
  out = []
  # (dice rough, dice kept, score gain, IoU drop, overlap) per draw and image
  moves = {0: [(0.80, 0.95, 0.10, -0.05, 0.90), (0.90, 0.80, 0.01, 0.03, 0.70),
               (0.85, 0.86, 0.03, 0.00, 0.95)],
           1: [(0.70, 0.90, 0.20, 0.01, 0.80), (0.90, 0.91, 0.00, -0.01, 0.99),
               (0.60, 0.50, 0.02, -0.02, 0.88)]}
  for draw, images in moves.items():
    for i, (rough, kept, gain, drop, overlap) in enumerate(images):
      base = {"id": f"img{i}", "draw": str(draw), "jitter": "0.15"}
      out.append(dict(base, method="initial", budget="32", dice=str(rough), score_rough="0.5",
                      score_kept="0.5", iou_rough="0.8", iou_kept="0.8", overlap_rough="1.0"))
      for budget in ("16", "32"):
        out.append(dict(base, method="hybrid", budget=budget, dice=str(kept), score_rough="0.5",
                        score_kept=str(0.5 + gain), iou_rough="0.8", iou_kept=str(0.8 - drop),
                        overlap_rough=str(overlap)))
  return out


def test_judge_by_hand():
  m = safeguard_choice.moves(rows(), "hybrid", 32)
  np.testing.assert_allclose(m["score_gain"], [0.10, 0.01, 0.03, 0.20, 0.00, 0.02], atol=1e-9)
  keep_all = safeguard_choice.judge(m, settings.Safeguards(rules=()))
  # draw 0: 0.95, 0.80, 0.86 -> 0.870; draw 1: 0.90, 0.91, 0.50 -> 0.770
  assert keep_all["mean_dice"] == pytest.approx((0.87 + 0.77) / 2)
  assert keep_all["degraded"] == pytest.approx((1 / 3 + 1 / 3) / 2)
  # gain > 0.015 rejects image 1 of draw 0 and image 1 of draw 1; IoU drop <= 0 then rejects
  # image 0 of draw 1 (0.01): draw 0 keeps 0.95, 0.90, 0.86; draw 1 0.70, 0.90, 0.50.
  guard = settings.Safeguards(rules=("score_gain", "iou_agrees"), min_score_gain=0.015,
                              max_iou_drop=0.0)
  r = safeguard_choice.judge(m, guard)
  assert r["mean_dice"] == pytest.approx(((0.95 + 0.90 + 0.86) / 3 + (0.70 + 0.90 + 0.50) / 3)
                                         / 2)
  assert r["accepted"] == pytest.approx((2 / 3 + 1 / 3) / 2)
  assert r["degraded"] == pytest.approx((0 + 1 / 3) / 2)
  assert r["improved"] == pytest.approx((2 / 3 + 0) / 2)
  # The overlap rule: >= 0.9 keeps draw 0's images 0 and 2 and draw 1's image 1.
  r = safeguard_choice.judge(m, settings.Safeguards(rules=("score_gain", "mask_overlap"),
                                               min_score_gain=-1.0, min_mask_dice=0.9))
  assert r["accepted"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_table_and_errors(tmp_path):
  run = tmp_path / "gval_x"
  run.mkdir()
  common.write_csv(run / "per_image.csv", rows())
  text = safeguard_choice.table([run], "hybrid", 32)
  assert text.count("\n| ") == len(safeguard_choice.grid()) + 1
  assert "| none | 0.820 / " in text
  with pytest.raises(ValueError, match="no rows of method 'sampot'"):
    safeguard_choice.table([run], "sampot", 32)


def test_choose_keeps_new_sites_safe_at_a_small_cost_at_home():
  base = dict(dice_rough=np.full(4, 0.8), draw=np.zeros(4, int), score_gain=np.full(4, 0.1),
              mask_overlap=np.ones(4))
  # At home every move gains 0.1; the IoU head falls by 0.005 on the last one.
  home = dict(base, dice_kept=np.full(4, 0.9), iou_agrees=np.array([-0.05, -0.05, -0.05, 0.005]))
  # On the new site the move the IoU head contradicts most (by 0.02) loses 0.2.
  new = dict(base, dice_kept=np.array([0.9, 0.9, 0.6, 0.9]),
             iou_agrees=np.array([-0.02, 0.0, 0.02, 0.008]))
  chosen, qualified = safeguard_choice.choose({"home": home, "new": new})
  # Keeping every move (or allowing a drop of 0.02) degrades a quarter of the new site; a drop
  # <= 0 costs home 0.025; a drop <= 0.01 passes both, at any score margin below the gains:
  # the grid's first of those.
  assert "none" not in qualified and "gain > 0, IoU drop <= 0.02" not in qualified
  assert "gain > 0, IoU drop <= 0" not in qualified
  assert safeguard_choice.label(chosen) == "gain > 0, IoU drop <= 0.01"
  assert qualified["gain > 0, IoU drop <= 0.01"] == pytest.approx((0.9 + 0.875) / 2)
  # Nothing to guard against: no rule (the first of equals).
  assert safeguard_choice.choose({"home": home, "new": dict(new, dice_kept=np.full(4, 0.9))}
                            )[0].rules == ()
  # A degradation no rule of the grid catches: nothing qualifies.
  assert safeguard_choice.choose({"home": home, "new": dict(new, iou_agrees=np.full(4, -1.0))}
                            ) == (None, {})
