"""data.images: users' images as the refine and score tasks read them (PNG/JPEG/TIFF 8/16-bit,
DICOM with its windowing), masks, folders, and the square the regressor sees."""
import tracemalloc

import numpy as np
from PIL import Image
import pytest

from sampot_jax import errors
from sampot_jax.data import images as images_lib
from tests.helpers import linear_window, ramp, write_dicom


def test_dicom_monochrome2_rescale_and_window(tmp_path):
  stored = ramp(20, 30, 4095)
  path = write_dicom(tmp_path / "a.dcm", stored, rescale=(2, -1000), window=(0, 400))
  image = images_lib.read_image(path)
  hu = 2.0 * stored - 1000
  np.testing.assert_array_equal(image.pixels, linear_window(hu, 0, 400))
  assert image.intensity == "window 0/400"
  assert image.pixels.dtype == np.uint8 and image.size == (20, 30)
  assert image.gray == pytest.approx(image.pixels / 255.0)
  assert (image.pixels == 0).any() and (image.pixels == 255).any()  # the window clips both ends


def test_dicom_monochrome1_is_inverted(tmp_path):
  stored = ramp(20, 30, 4095)
  mono2 = images_lib.read_image(write_dicom(tmp_path / "m2.dcm", stored, window=(2048, 1000)))
  mono1 = images_lib.read_image(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1",
                                            window=(2048, 1000)))
  np.testing.assert_array_equal(mono1.pixels, 255 - mono2.pixels)
  assert mono1.intensity == "window 2048/1000, MONOCHROME1 inverted"
  # Without windowing tags: the (rescaled) image's own range, then inverted.
  plain = images_lib.read_image(write_dicom(tmp_path / "p1.dcm", stored // 2 + 100,
                                            "MONOCHROME1"))
  expected = np.rint((stored // 2) * 255.0 / (stored.max() // 2)).astype(np.uint8)
  np.testing.assert_array_equal(plain.pixels, 255 - expected)
  assert plain.intensity == "range [100, 2147], MONOCHROME1 inverted"


def test_dicom_without_windowing_tags_uses_its_own_range(tmp_path):
  stored = ramp(16, 16, 1000) + 24
  image = images_lib.read_image(write_dicom(tmp_path / "a.dcm", stored, rescale=(0.5, 10)))
  assert image.intensity == "range [22, 522]"
  assert image.pixels.min() == 0 and image.pixels.max() == 255
  values = 0.5 * stored + 10
  np.testing.assert_array_equal(
      image.pixels, np.rint((values - 22) * 255.0 / 500).astype(np.uint8))


def test_dicom_voi_lut_sequence_and_other_functions(tmp_path):
  stored = ramp(16, 20, 300)
  lut = 255 - np.arange(256)  # an inverting 8-bit LUT for the values 0..255
  image = images_lib.read_image(write_dicom(tmp_path / "lut.dcm", stored,
                                            voi_lut=((256, 0, 8), lut, "US")))
  expected = np.where(stored > 255, 0, 255 - stored).astype(np.uint8)  # beyond: last entry
  np.testing.assert_array_equal(image.pixels, expected)
  assert image.intensity == "voi_lut"
  # A 16-bit LUT as OW bytes, first mapped value 100: below it the first entry.
  lut16 = np.linspace(0, 65535, 201).astype(np.uint16)
  image = images_lib.read_image(write_dicom(tmp_path / "ow.dcm", stored,
                                            voi_lut=((201, 100, 16), lut16, "OW")))
  index = np.clip(stored.astype(int) - 100, 0, 200)
  np.testing.assert_array_equal(image.pixels,
                                np.rint(lut16[index] / 65535 * 255).astype(np.uint8))
  # SIGMOID and LINEAR_EXACT (PS3.3 C.11.2.1.3.1 and C.11.2.1.3.2).
  x = stored.astype(np.float64)
  sig = images_lib.read_image(write_dicom(tmp_path / "s.dcm", stored, window=(150, 100),
                                          function="SIGMOID"))
  np.testing.assert_array_equal(
      sig.pixels, np.rint(255 / (1 + np.exp(-4 * (x - 150) / 100))).astype(np.uint8))
  exact = images_lib.read_image(write_dicom(tmp_path / "e.dcm", stored, window=(150, 100),
                                            function="LINEAR_EXACT"))
  np.testing.assert_array_equal(
      exact.pixels, np.rint(255 * np.clip((x - 150) / 100 + 0.5, 0, 1)).astype(np.uint8))
  # A width that is not > 0: the image's own range, with a warning.
  with pytest.warns(UserWarning, match="Window Width"):
    bad = images_lib.read_image(write_dicom(tmp_path / "w0.dcm", stored, window=(100, 0)))
  assert bad.intensity == "range [0, 300]"


def test_dicom_bad_files_name_the_file(tmp_path):
  multi = write_dicom(tmp_path / "multi.dcm", np.stack([ramp(8, 8, 9)] * 2), frames=2)
  with pytest.raises(errors.BadInputError, match=r"multi\.dcm.*multi-frame"):
    images_lib.read_image(multi)
  truncated = write_dicom(tmp_path / "trunc.dcm", ramp(16, 16, 9), truncate=True)
  assert images_lib.read_size(truncated) == (16, 16)  # the header is fine
  with pytest.raises(errors.BadInputError, match=r"trunc\.dcm"):
    images_lib.read_image(truncated)
  junk = tmp_path / "junk.dcm"
  junk.write_bytes(b"not a dicom file at all" * 10)
  with pytest.raises(errors.BadInputError, match=r"junk\.dcm"):
    images_lib.read_size(junk)


def test_sixteen_bit_png_and_tiff_use_their_own_range(tmp_path):
  stored = (ramp(24, 40, 3000) + 1000).astype(np.uint16)
  Image.fromarray(stored).save(tmp_path / "a.png")
  Image.fromarray(stored).save(tmp_path / "a.tif")
  expected = np.rint((stored - 1000.0) * 255.0 / 3000).astype(np.uint8)
  for name in ("a.png", "a.tif"):
    image = images_lib.read_image(tmp_path / name)
    with Image.open(tmp_path / name) as im:
      assert im.mode.startswith("I;16"), im.mode  # really 16 bits on disk
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.intensity == "range [1000, 4000]"
  floats = np.linspace(-1, 1, 24 * 40, dtype=np.float32).reshape(24, 40)
  Image.fromarray(floats, "F").save(tmp_path / "f.tif")
  image = images_lib.read_image(tmp_path / "f.tif")
  assert image.pixels[0, 0] == 0 and image.pixels[-1, -1] == 255


def test_eight_bit_grey_rgb_and_non_square(tmp_path):
  grey = ramp(30, 70, 255).astype(np.uint8)
  Image.fromarray(grey).save(tmp_path / "g.png")
  image = images_lib.read_image(tmp_path / "g.png")
  np.testing.assert_array_equal(image.pixels, grey)
  assert image.size == (30, 70) and image.intensity == "8-bit"
  rgb = np.zeros((30, 70, 3), np.uint8)
  rgb[..., 0] = 200
  rgb[..., 2] = grey
  Image.fromarray(rgb).save(tmp_path / "c.png")
  image = images_lib.read_image(tmp_path / "c.png")
  assert image.pixels.shape == (30, 70, 3)  # SAM gets the colours
  luma = np.asarray(Image.fromarray(rgb).convert("L")) / 255.0
  assert image.gray == pytest.approx(luma)  # the regressor gets the luma
  Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "j.jpg", quality=95)
  image = images_lib.read_image(tmp_path / "j.jpg")
  assert image.pixels.ndim == 2 and image.size == (30, 70)  # a grey JPEG stays grey


def test_to_square_pads_then_resizes_keeping_the_aspect():
  image = np.zeros((40, 100), np.float32)
  image[10:30, 50:90] = 1.0  # a 20 x 40 block
  square = images_lib.to_square(image, 50)
  assert square.shape == (50, 50)
  assert square[25:, :].max() == 0.0  # the padding: rows 40..99 of the 100 square
  block = square > 0.5
  rows, cols = np.nonzero(block)
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 25, 44)  # halved, in place
  assert images_lib.to_square(np.ones((7, 7)), 7) == pytest.approx(np.ones((7, 7)))


@pytest.mark.parametrize("h, w, side", [
    (40, 100, 50), (100, 40, 50), (300, 301, 299), (1000, 999, 256), (5, 160, 128),
    (17, 33, 1024), (64, 2048, 256), (2048, 64, 32)])
def test_to_square_equals_pillow_on_the_padded_square(h, w, side):
  """Pillow's antialiased bilinear resize of the zero-padded square is the reference; the
  square-free passes sum in another order, so a float32 result may differ in its last bit:
  measured on 60 random shapes and sides, at most 2^-24 (one unit in the last place of values in
  [0.5, 1), the values' range here) on at most 0.45 % of the pixels."""
  array = np.random.default_rng(h * w).random((h, w), dtype=np.float32)
  n = max(h, w)
  padded = np.zeros((n, n), np.float32)
  padded[:h, :w] = array
  pillow = np.asarray(Image.fromarray(padded, "F").resize((side, side),
                                                          Image.Resampling.BILINEAR))
  ours = images_lib.to_square(array, side)
  assert np.abs(ours - pillow).max() <= 2.0**-24
  assert (ours != pillow).mean() < 0.01


def test_to_square_never_builds_the_square_of_the_longest_side():
  array = np.ones((64, 4096), np.float32)  # its square: 4096^2 float32 = 64 MiB
  tracemalloc.start()
  try:
    square = images_lib.to_square(array, 256)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB"  # image-sized: 64 x 4096 x 4 B = 1 MiB
  assert square[:3].min() > 0.99 and square[5:].max() == 0.0  # 64 of 4096 rows: 4 of 256


def test_read_mask_thresholds_at_half_the_maximum(tmp_path):
  mask = np.zeros((10, 12), np.uint8)
  mask[2:5, 3:8] = 255
  noisy = mask.copy()
  noisy[0, 0], noisy[3, 3] = 20, 230  # JPEG-like noise
  Image.fromarray(noisy).save(tmp_path / "m.png")
  np.testing.assert_array_equal(images_lib.read_mask(tmp_path / "m.png"), mask > 0)
  Image.fromarray((mask > 0).astype(np.uint8)).save(tmp_path / "m01.png")
  np.testing.assert_array_equal(images_lib.read_mask(tmp_path / "m01.png"), mask > 0)
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty.png")
  assert not images_lib.read_mask(tmp_path / "empty.png").any()


def test_list_images_finds_images_below_a_folder(tmp_path):
  for name in ("a.png", "sub/b.dcm", "sub/c.TIF", ".hidden/d.png", "notes.txt", "out/x.png"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  noext = tmp_path / "sub" / "IM0001"
  noext.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
  found = images_lib.list_images(tmp_path, exclude=[tmp_path / "out"])
  assert sorted(found) == ["a.png", "sub/IM0001", "sub/b.dcm", "sub/c.TIF"]
  assert images_lib.list_images(tmp_path / "a.png") == {"a.png": tmp_path / "a.png"}
  with pytest.raises(FileNotFoundError, match="nowhere"):
    images_lib.list_images(tmp_path / "nowhere")


def test_a_label_map_is_refused_unless_its_label_is_named(tmp_path):
  labels = np.zeros((40, 50), np.uint8)
  labels[5:20, 5:25] = 1
  labels[22:38, 5:45] = 2  # 640 pixels of label 2, 300 of label 1
  Image.fromarray(labels).save(tmp_path / "labels.png")
  with pytest.raises(errors.BadInputError, match=r"label map \(values 0, 1, 2 .*--config.label"):
    images_lib.read_mask(tmp_path / "labels.png")
  np.testing.assert_array_equal(images_lib.read_mask(tmp_path / "labels.png", label=1), labels == 1)
  with pytest.raises(errors.BadInputError, match="no pixel of label 3; its values are 0, 1, 2"):
    images_lib.read_mask(tmp_path / "labels.png", label=3)
  # A two-valued mask with a few edge values (antialiasing, JPEG) still reads by threshold.
  edged = np.where(labels == 2, 255, 0).astype(np.uint8)
  edged[22, 5:9] = (90, 128, 170, 200)
  Image.fromarray(edged).save(tmp_path / "edged.png")
  np.testing.assert_array_equal(images_lib.read_mask(tmp_path / "edged.png"), edged > 127.5)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied_as_a_viewer_shows_it(tmp_path, suffix):
  """Orientation 6: the stored 20 x 40 picture is shown turned 90 degrees clockwise, 40 x 20."""
  stored = np.zeros((20, 40), np.uint8)
  stored[:10, :20] = 255  # bright top-left quadrant as stored
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(stored).save(tmp_path / f"turned{suffix}", exif=exif)
  shown = np.rot90(stored, k=-1)  # clockwise
  image = images_lib.read_image(tmp_path / f"turned{suffix}")
  assert image.size == (40, 20)
  assert np.abs(image.pixels.astype(int) - shown).mean() < 3  # JPEG: a little noise
  assert image.pixels[:20, 10:].mean() > 200 and image.pixels[20:, :].mean() < 30


def test_all_nan_images_are_refused_and_constant_ones_named(tmp_path, caplog):
  Image.fromarray(np.full((16, 18), np.nan, np.float32)).save(tmp_path / "nan.tif")
  with pytest.raises(errors.BadInputError, match="nan.tif: holds no finite value"):
    images_lib.read_image(tmp_path / "nan.tif")
  Image.fromarray(np.full((16, 18), 3.5, np.float32)).save(tmp_path / "flat.tif")
  with caplog.at_level("WARNING"):
    image = images_lib.read_image(tmp_path / "flat.tif")
  assert image.size == (16, 18) and "flat.tif is constant" in caplog.text


@pytest.mark.parametrize("h, w, why", [
    (20, 3, "needs at least 16 pixels on each side"),
    (3, 100000, "needs at least 16 pixels on each side"),
    (16, 1000, "over 32 times longer than wide"),
    (150, 150, "has 22,500 pixels, over the 20,000 this tool reads"),
])
def test_sizes_the_models_cannot_take_are_refused_from_the_header(tmp_path, monkeypatch, h, w,
                                                                  why):
  # The pixel bound (10^8) made small, so that the test does not write a 100-megapixel file.
  monkeypatch.setattr(images_lib, "MAX_PIXELS", 20_000)
  path = tmp_path / "odd.png"
  Image.fromarray(np.zeros((h, w), np.uint8)).save(path)
  with pytest.raises(errors.BadInputError, match=rf"odd.png: is {w}x{h} \(W x H\) and .*{why}"):
    images_lib.read_size(path)
  with pytest.raises(errors.BadInputError, match=why):
    images_lib.read_image(path)


def test_the_header_size_follows_the_exif_orientation(tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(np.zeros((20, 40), np.uint8)).save(tmp_path / "turned.png", exif=exif)
  assert images_lib.read_size(tmp_path / "turned.png") == (40, 20)
