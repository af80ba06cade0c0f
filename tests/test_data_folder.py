"""The plain-folder reader (source='folder'): 8/16-bit PNG, TIFF, JPEG, single masks/."""
import numpy as np
from PIL import Image
import pytest

from sampot_jax import data
from sampot_jax import errors
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


# ---------------------------------------------------------------------------
# Your own labelled folder: any structure, label maps, DICOM and NIfTI slices, a seeded split.


def _label_folder(tmp_path, n=6):
  """A folder whose masks/ are label maps: 0 background, 1 the right lung, 2 the left lung."""
  ids = fake_data.write("folder", tmp_path, n=n)
  for sid in ids:
    left = np.array(Image.open(tmp_path / "masks" / "left" / f"{sid}.png")) > 0
    right = np.array(Image.open(tmp_path / "masks" / "right" / f"{sid}.png")) > 0
    labels = np.where(left, 2, np.where(right, 1, 0)).astype(np.uint8)
    fake_data.write_image(tmp_path / "labels" / f"{sid}.png", labels)
  return ids


def test_any_structure_from_its_own_mask_folder(tmp_path):
  ids = fake_data.write("montgomery_team", tmp_path, n=6)
  # A third structure beside the lungs, as JSRT's masks/heart/: here the left lung's copy.
  (tmp_path / "masks" / "heart").mkdir()
  for sid in ids:
    (tmp_path / "masks" / "heart" / f"{sid}.png").write_bytes(
        (tmp_path / "masks" / "left" / f"{sid}.png").read_bytes())
  ls = data.load_split(_config(tmp_path, target="heart"), "train")
  lungs = data.load_split(_config(tmp_path), "train")
  assert ls.target_only == "heart" and ls.other_lung("heart") is None
  np.testing.assert_array_equal(ls.target("heart"), lungs.target("left"))
  with pytest.raises(errors.MissingInputError, match="masks/kidney"):
    data.load_split(_config(tmp_path, target="kidney"), "train")
  with pytest.raises(ValueError, match="source='folder'"):
    data.load_split(_config(tmp_path, target="heart", source="montgomery_team"), "train")


def test_label_maps_read_with_the_label(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  _label_folder(tmp_path / "two")
  lungs = data.load_split(_config(tmp_path / "two"), "test")
  shutil.copytree(tmp_path / "two" / "images", tmp_path / "maps" / "images")
  shutil.copytree(tmp_path / "two" / "labels", tmp_path / "maps" / "masks")
  for side, label in (("left", 2), ("right", 1)):
    ls = data.load_split(_config(tmp_path / "maps", target=side, label=label), "test")
    assert ls.ids == lungs.ids
    np.testing.assert_array_equal(ls.target(side), lungs.target(side))
  # Without the label the label map's values 0/1/2 are refused; a label no pixel has is named.
  with pytest.raises(ValueError, match="besides 0/1/255"):
    data.load_split(_config(tmp_path / "maps"), "test")
  with pytest.raises(ValueError, match="no pixel of label 7"):
    data.load_split(_config(tmp_path / "maps", label=7), "test")


def test_label_with_left_and_right_folders_is_refused(tmp_path):
  fake_data.write("folder", tmp_path, n=3)
  with pytest.raises(ValueError, match="config.data.label=2"):
    data.load_split(_config(tmp_path, label=2), "train")


def test_dicom_and_nifti_slices(tmp_path):
  import nibabel  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  ids = fake_data.write("folder", tmp_path, n=6)
  for path in (tmp_path / "images").iterdir():  # full range: DICOM/NIfTI scale by their own
    fake_data.write_image(path, raw.scale_to_uint8(np.array(Image.open(path))))
  expected = data.load_split(_config(tmp_path), "test")
  for sid in expected.ids[:2]:  # one DICOM, one NIfTI image (each with a mask of its kind)
    png = tmp_path / "images" / f"{sid}.png"
    pixels = np.array(Image.open(png))
    mask_png = tmp_path / "masks" / "left" / f"{sid}.png"
    mask = (np.array(Image.open(mask_png)) > 0).astype(np.uint8)
    if sid == expected.ids[0]:
      helpers.write_dicom(png.with_suffix(".dcm"), pixels.astype(np.uint16) * 16, bits_stored=12)
      helpers.write_dicom(mask_png.with_suffix(".dcm"), mask, bits_stored=1)
    else:  # NIfTI: x is the first voxel axis, so the slice is stored transposed
      nibabel.save(nibabel.Nifti1Image(pixels.T[:, :, None].astype(np.float32), np.eye(4)),
                   str(tmp_path / "images" / f"{sid}.nii.gz"))
      nibabel.save(nibabel.Nifti1Image(mask.T.astype(np.uint8), np.eye(4)),
                   str(tmp_path / "masks" / "left" / f"{sid}.nii.gz"))
    png.unlink()
    mask_png.unlink()
  # Only masks/left is converted: read the left lung from a single-structure copy of it.
  (tmp_path / "masks" / "left").rename(tmp_path / "left")
  for path in (tmp_path / "masks" / "right").iterdir():
    path.unlink()
  (tmp_path / "masks" / "right").rmdir()
  (tmp_path / "masks").rmdir()
  (tmp_path / "left").rename(tmp_path / "masks")
  got = data.load_split(_config(tmp_path), "test")
  assert got.ids == expected.ids and set(ids) >= set(got.ids)
  np.testing.assert_array_equal(got.target("left"), expected.target("left"))
  # 12-bit DICOM (windowed by its range) and float NIfTI: within one grey level of the PNG.
  assert np.abs(got.images.astype(int) - expected.images).max() <= 1
  # A NIfTI of several slices is refused, naming the file.
  volume = tmp_path / "images" / f"{expected.ids[1]}.nii.gz"
  nibabel.save(nibabel.Nifti1Image(np.zeros((64, 80, 3), np.float32), np.eye(4)), str(volume))
  with pytest.raises(ValueError, match="volume of 3 slices"):
    data.load_split(_config(tmp_path), "test")


def test_seeded_split_is_stable_and_changes_with_the_seed(tmp_path):
  from sampot_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  fake_data.write("folder", tmp_path, n=24)
  table, findings = pipeline.split_table(_config(tmp_path))
  again, _ = pipeline.split_table(_config(tmp_path))
  other, _ = pipeline.split_table(_config(tmp_path, split_seed=1))
  assert table == again and table != other
  assert sorted(table.values()) == sorted(other.values())  # the same proportions
  assert set(findings.values()) == {"normal", "tuberculosis"}  # from the NLM file names
  assert [data.load_split(_config(tmp_path, split_seed=1), s).ids for s in data.SPLITS] == [
      sorted(i for i, s in other.items() if s == split) for split in data.SPLITS]
  # With a splits.csv there is nothing to derive.
  fake_data.write("montgomery_team", tmp_path / "team", n=6)
  assert pipeline.split_table(_config(tmp_path / "team")) is None
