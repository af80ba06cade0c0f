"""Mask helpers: checks, lung separation, resizing, LungSet."""
import numpy as np
import pytest

from sampot_jax import data
from sampot_jax import errors
from sampot_jax.data import lungs


def _two_lungs(size=64):
  merged = np.zeros((size, size), bool)
  merged[10:50, 8:26] = True    # image left: the patient's right lung
  merged[12:48, 38:58] = True   # image right: the patient's left lung (larger)
  return merged


def test_split_lungs_by_x_and_drops_specks():
  merged = _two_lungs()
  merged[60, 60] = True  # a speck
  left, right = lungs.split_lungs(merged, "m.png")
  assert np.nonzero(left)[1].mean() > np.nonzero(right)[1].mean()
  assert left.sum() == 36 * 20 and right.sum() == 40 * 18
  assert not left[60, 60] and not right[60, 60]


def test_split_lungs_needs_two_lungs():
  merged = np.zeros((32, 32), bool)
  merged[5:25, 5:25] = True
  with pytest.raises(errors.BadInputError, match="m.png: merged lung mask has 1 connected"):
    lungs.split_lungs(merged, "m.png")
  merged[28, 28] = True  # a speck is not a lung
  with pytest.raises(errors.BadInputError, match="under 10% of the largest"):
    lungs.split_lungs(merged, "m.png")


def test_check_mask_accepts_0_1_and_0_255():
  raw = _two_lungs().astype(np.uint8)
  np.testing.assert_array_equal(lungs.check_mask(raw, "a"), raw > 0)
  np.testing.assert_array_equal(lungs.check_mask(raw * 255, "a"), raw > 0)
  with pytest.raises(errors.BadInputError, match="values \\[7\\]"):
    lungs.check_mask(raw * 7, "a")


def test_resize_mask_by_area_fraction():
  mask = np.zeros((8, 8), bool)
  mask[0:2, 0:2] = True           # full block -> set
  mask[0, 2:4] = True             # half block -> not set (needs > 1/2)
  mask[2:4, 0] = mask[2, 1] = True  # 3 of 4 -> set
  out = lungs.resize_mask(mask, 4)
  assert out[0, 0] and not out[0, 1] and out[1, 0]
  assert out.sum() == 2
  up = lungs.resize_mask(mask, 16)
  assert up.shape == (16, 16) and up[:4, :4].all()


def test_resize_image_keeps_range_and_mean():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (64, 48)).astype(np.uint8)
  out = lungs.resize_image(image, 32)
  assert out.shape == (32, 32) and out.dtype == np.uint8
  assert abs(float(out.mean()) - float(image.mean())) < 3
  assert out.std() < image.std()  # antialiased: the noise is averaged down


def test_lungset_checks_shapes():
  images = np.zeros((2, 8, 8), np.uint8)
  masks = np.zeros((2, 8, 8), bool)
  with pytest.raises(ValueError, match="LungSet.left"):
    data.LungSet(["a", "b"], images, masks[:1], masks)
  ls = data.LungSet(["a", "b"], images, masks, masks)
  assert len(ls) == 2 and ls.target().shape == (2, 8, 8)
