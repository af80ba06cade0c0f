"""The plain-folder reader (source='folder'): 8/16-bit PNG, TIFF, JPEG, single masks/."""
import numpy as np
from PIL import Image
import pytest

from sampot_jax import data
from sampot_jax.data import fake_data
from sampot_jax.data import raw
from sampot_jax.runtime import settings


def _config(root, **overrides):
  config = settings.block(settings.Data())
  config.source, config.dir, config.image_size = "folder", str(root), 32
  for k, v in overrides.items():
    config[k] = v
  return config


def test_folder_with_splits_csv(tmp_path):
  ids = fake_data.write("montgomery_team", tmp_path, n=6)  # same layout, with splits.csv
  ls = data.load_split(_config(tmp_path), "train")
  assert ls.ids == sorted(ids[0::3])
  assert ls.images.shape == (2, 32, 32) and ls.images.dtype == np.uint8
  assert ls.left.shape == (2, 32, 32) and ls.left.dtype == bool
  assert (np.nonzero(ls.left[0])[1].mean() > np.nonzero(ls.right[0])[1].mean())


def test_folder_without_split_file_uses_deterministic_split(tmp_path):
  ids = fake_data.write("folder", tmp_path, n=12)
  got = [data.load_split(_config(tmp_path), s).ids for s in data.SPLITS]
  assert sorted(sum(got, [])) == sorted(ids)
  assert all(got)
  assert got == [data.load_split(_config(tmp_path), s).ids for s in data.SPLITS]


def test_16_bit_png_and_tiff_scaled_by_own_min_max(tmp_path):
  fake_data.write("folder", tmp_path, n=3)
  images = sorted((tmp_path / "images").iterdir())
  eight = np.array(Image.open(images[0]))
  # 12-bit content in a 16-bit container: scaled by its own min/max, not by 65535.
  sixteen = (eight.astype(np.uint16) * 16 + 100).astype(np.uint16)
  images[0].unlink()
  fake_data.write_image(images[0], sixteen)
  tif = images[1].with_suffix(".tif")
  fake_data.write_image(tif, np.array(Image.open(images[1])).astype(np.uint16) * 257)
  images[1].unlink()
  assert Image.open(images[0]).mode.startswith("I")
  decoded = raw.read_image(images[0])
  assert decoded.dtype == np.uint8 and decoded.min() == 0 and decoded.max() == 255
  expected = (eight.astype(float) - eight.min()) * 255 / np.ptp(eight)
  np.testing.assert_allclose(decoded, expected, atol=0.5 + 1e-6)
  np.testing.assert_array_equal(raw.read_image(tif), raw.scale_to_uint8(
      np.array(Image.open(tif)).astype(np.float64)))
  ids = sum((data.load_split(_config(tmp_path), s).ids for s in data.SPLITS), [])
  assert sorted(ids) == sorted(p.stem for p in images)


def test_jpeg_rgb_image(tmp_path):
  fake_data.write("folder", tmp_path, n=3)
  png = sorted((tmp_path / "images").iterdir())[0]
  gray = np.array(Image.open(png))
  Image.fromarray(np.stack([gray] * 3, -1)).save(png.with_suffix(".jpg"), quality=95)
  png.unlink()
  decoded = raw.read_image(png.with_suffix(".jpg"))
  assert decoded.shape == gray.shape and decoded.dtype == np.uint8
  assert np.abs(decoded.astype(int) - gray).mean() < 6
  ids = sum((data.load_split(_config(tmp_path), s).ids for s in data.SPLITS), [])
  assert png.stem in ids


@pytest.mark.parametrize("target", ["left", "both"])
def test_single_masks_folder_holds_the_target_only(tmp_path, target):
  fake_data.write("folder", tmp_path, n=6)
  # Move masks/<target side> (or the union) into a single masks/ folder.
  for path in sorted((tmp_path / "masks" / "left").iterdir()):
    left = np.array(Image.open(path)) > 0
    right = np.array(Image.open(tmp_path / "masks" / "right" / path.name)) > 0
    mask = left if target == "left" else left | right
    fake_data.write_image(tmp_path / "single" / path.name, mask.astype(np.uint8) * 255)
  for side in ("left", "right"):
    for path in (tmp_path / "masks" / side).iterdir():
      path.unlink()
    (tmp_path / "masks" / side).rmdir()
  (tmp_path / "masks").rmdir()
  (tmp_path / "single").rename(tmp_path / "masks")
  ls = data.load_split(_config(tmp_path, target=target), "test")
  assert ls.target_only == target
  mask = ls.target(target)
  assert mask.dtype == bool and mask.reshape(len(ls), -1).any(axis=1).all()
  other = "right" if target == "left" else "left"
  with pytest.raises(ValueError, match="single masks/ folder"):
    ls.target(other)
  assert ls.other_lung(target) is None


def _second_file(path, suffix):
  """Writes the image at `path` again beside it, as `suffix` (same stem)."""
  twin = path.with_suffix(suffix)
  Image.open(path).convert("L").save(twin)
  return twin


def test_two_image_files_of_one_id_are_an_error_naming_both(tmp_path):
  ids = fake_data.write("montgomery_team", tmp_path, n=6)
  sid = ids[0]  # a train subject
  twin = _second_file(tmp_path / "images" / f"{sid}.png", ".jpg")
  with pytest.raises(ValueError) as e:
    data.load_split(_config(tmp_path), "train")
  message = str(e.value)
  assert f"{sid}.jpg and {sid}.png" in message and str(twin.parent) in message, message
  assert "keep one" in message
  assert data.load_split(_config(tmp_path), "val").ids == sorted(ids[1::3])  # Others unaffected.


def test_two_image_files_of_one_id_are_a_logged_skip(tmp_path, caplog):
  import logging
  ids = fake_data.write("montgomery_team", tmp_path, n=6)
  sid = ids[0]
  _second_file(tmp_path / "images" / f"{sid}.png", ".jpg")
  with caplog.at_level(logging.WARNING):
    ls = data.load_split(_config(tmp_path, on_bad_example="skip"), "train")
  assert ls.ids == sorted(set(ids[0::3]) - {sid})
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert f"{sid}.jpg and {sid}.png" in warnings and "1 bad example(s) skipped" in warnings


def test_two_mask_files_of_one_id_are_an_error_naming_both(tmp_path):
  ids = fake_data.write("montgomery_team", tmp_path, n=6)
  sid = ids[0]
  _second_file(tmp_path / "masks" / "left" / f"{sid}.png", ".gif")
  with pytest.raises(ValueError, match=rf"{sid}.gif and {sid}.png in .*left could each be the "
                                       rf"mask of image '{sid}'"):
    data.load_split(_config(tmp_path), "train")
