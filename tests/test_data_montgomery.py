"""load_split on the real team copy of Montgomery (../shared/data/montgomery)."""
import csv
import sys

import numpy as np
import pytest

from sampot_jax import data
from sampot_jax.runtime import settings

from tests.conftest import MONTGOMERY

pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = settings.block(settings.Data())
  c.dir = str(MONTGOMERY)
  c.tfds_dir = str(tmp_path_factory.mktemp("tfds"))
  return c


@pytest.fixture(scope="module")
def sets(config):
  return {split: data.load_split(config, split) for split in data.SPLITS}


def test_counts_follow_splits_csv(sets):
  with open(MONTGOMERY / "splits.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 138
  for split in data.SPLITS:
    expected = sorted(r["id"] for r in rows if r["split"] == split)
    assert sets[split].ids == expected
  assert [len(sets[s]) for s in data.SPLITS] == [46, 31, 61]


def test_splits_do_not_overlap(sets):
  ids = [set(sets[s].ids) for s in data.SPLITS]
  assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_shapes_dtypes_and_binary_masks(sets):
  for ls in sets.values():
    n = len(ls)
    assert ls.images.shape == (n, 256, 256) and ls.images.dtype == np.uint8
    for m in (ls.left, ls.right, ls.target("left"), ls.target("both")):
      assert m.shape == (n, 256, 256) and m.dtype == bool
    assert ls.left.reshape(n, -1).any(axis=1).all()
    assert ls.right.reshape(n, -1).any(axis=1).all()
    assert not (ls.left & ls.right).any()
    # Real radiographs, not blank arrays.
    assert ls.images.std() > 20


def test_left_lung_on_image_right_side(sets):
  ls = sets["test"]
  xs = np.arange(256)
  left_x = (ls.left.sum(axis=1) * xs).sum(axis=1) / ls.left.sum(axis=(1, 2))
  right_x = (ls.right.sum(axis=1) * xs).sum(axis=1) / ls.right.sum(axis=(1, 2))
  assert (left_x > 128).all() and (right_x < 128).all()


def test_target_selects_masks(sets):
  ls = sets["val"]
  np.testing.assert_array_equal(ls.target("left"), ls.left)
  np.testing.assert_array_equal(ls.target("right"), ls.right)
  np.testing.assert_array_equal(ls.target("both"), ls.left | ls.right)
  np.testing.assert_array_equal(ls.other_lung("left"), ls.right)
  with pytest.raises(ValueError, match="target='lungs'"):
    ls.target("lungs")


def test_masks_match_the_512_files(sets):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ls = sets["train"]
  sid = ls.ids[0]
  raw = np.array(Image.open(MONTGOMERY / "masks" / "left" / f"{sid}.png")) > 0
  # Area-fraction downscale by 2: a pixel is set when 3 or 4 of its 2x2 block are.
  expected = raw.reshape(256, 2, 256, 2).sum(axis=(1, 3)) > 2
  np.testing.assert_array_equal(ls.left[0], expected)


def test_other_image_size(config):
  c = config.copy_and_resolve_references()
  c.image_size = 64
  ls = data.load_split(c, "val")
  assert ls.images.shape == (31, 64, 64) and ls.left.shape == (31, 64, 64)


def test_no_tensorflow_needed(sets):
  assert "tensorflow" not in sys.modules
