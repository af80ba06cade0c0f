"""SamPredictor's pre/post-processing against the official code and Pillow, exactly."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F

from reference import official as sam_official
from sampot_jax.sam import transforms

pytestmark = pytest.mark.optimized  # compares with the official code and Pillow


@pytest.mark.parametrize("shape", [(512, 512, 3), (300, 451, 3), (1500, 1203, 3), (77, 33, 3),
                                   (1024, 700, 3), (2000, 2000, 3)])
def test_resize_is_bit_identical_to_official(shape):
  image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
  expected = ResizeLongestSide(1024).apply_image(image)  # torchvision -> PIL bilinear
  size = transforms.preprocess_shape(*shape[:2])
  assert size == expected.shape[:2]
  np.testing.assert_array_equal(transforms.resize_uint8(image, size), expected)


def test_resize_matches_pillow_on_a_smooth_image():
  # Smooth gradients exercise the rounding of every fixed-point tap, not only noise.
  y, x = np.mgrid[0:413, 0:287]
  image = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
  expected = np.asarray(Image.fromarray(image).resize((700, 1007), Image.BILINEAR))
  np.testing.assert_array_equal(transforms.resize_uint8(image, (1007, 700)), expected)


@pytest.mark.parametrize("original", [(512, 512), (300, 451), (1500, 1203)])
def test_coordinates_match_official(original):
  coords = np.random.default_rng(0).uniform(0, 300, (5, 2))
  boxes = np.random.default_rng(1).uniform(0, 300, (3, 4))
  official = ResizeLongestSide(1024)
  np.testing.assert_allclose(transforms.apply_coords(coords, original),
                             official.apply_coords(coords, original).astype(np.float32), rtol=0)
  np.testing.assert_allclose(transforms.apply_boxes(boxes, original),
                             official.apply_boxes(boxes, original).astype(np.float32), rtol=0)
  # The jnp path (used under grad) gives the same numbers to float32 rounding.
  np.testing.assert_allclose(transforms.apply_coords(jnp.asarray(coords, jnp.float32), original),
                             official.apply_coords(coords, original), rtol=1e-6)


@pytest.mark.parametrize("input_size,original", [((1024, 1024), (512, 512)),
                                                 ((683, 1024), (300, 451)),
                                                 ((1024, 819), (1500, 1200))])
def test_postprocess_masks_matches_official(input_size, original, record_figure):
  low_res = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 4
  # The official Sam.postprocess_masks, written out: it needs no model.
  expected = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
  expected = expected[..., :input_size[0], :input_size[1]]
  expected = F.interpolate(expected, original, mode="bilinear", align_corners=False).numpy()
  ours = np.asarray(transforms.postprocess_masks(jnp.asarray(low_res.numpy()), input_size, original))
  assert ours.shape == expected.shape
  # Same weights, summed in another order: float32 rounding only (measured: below 5e-7 relative
  # to the largest logit, about 4e-6 absolute on logits up to 18).
  err = sam_official.errors(expected, ours)
  record_figure(f"postprocess_masks{input_size}->{original}", err)
  assert err["max_rel"] < 2e-6, err


def test_pixels_are_normalised_and_zero_padded():
  image = np.full((300, 600, 3), 200, np.uint8)
  pixels, input_size, original = transforms.prepare_image(image)
  assert (input_size, original) == ((512, 1024), (300, 600))
  np.testing.assert_allclose(pixels[0, 0], (200 - transforms.PIXEL_MEAN) / transforms.PIXEL_STD,
                             rtol=1e-6)
  assert np.all(pixels[512:] == 0)


def test_grayscale_and_16_bit_inputs_are_converted_as_documented():
  gray = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
  rgb = transforms.to_rgb_uint8(gray)
  assert rgb.shape == (40, 30, 3) and np.all(rgb[..., 0] == gray) and np.all(rgb[..., 2] == gray)
  wide = np.array([[1000, 2000], [3000, 4095]], np.uint16)  # a 12-bit image: min 1000, max 4095
  expected = np.round((wide - 1000.0) * 255.0 / 3095.0).astype(np.uint8)  # [[0, 82], [165, 255]]
  np.testing.assert_array_equal(transforms.to_rgb_uint8(wide)[..., 0], expected)
  flat = np.full((4, 4), 7, np.uint16)  # a constant image must not divide by zero
  assert np.all(transforms.to_rgb_uint8(flat) == 0)


@pytest.mark.parametrize("image,message", [
    (np.zeros((4, 4, 4), np.uint8), "expected \\(H, W\\) grayscale or \\(H, W, 3\\)"),
    (np.zeros((2, 4, 4, 3), np.uint8), "expected \\(H, W\\) grayscale"),
    (np.zeros((0, 5), np.uint8), "is empty"),
    (np.zeros((4, 4), np.float32), "dtype float32; expected uint8 or uint16"),
    (np.full((4, 4), np.nan, np.float32), "NaN"),
])
def test_bad_images_get_clear_errors(image, message):
  with pytest.raises(ValueError, match=message):
    transforms.to_rgb_uint8(image)


def test_batch_of_mixed_sizes_is_refused():
  with pytest.raises(ValueError, match="mixes sizes"):
    transforms.prepare_images([np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8)])
  with pytest.raises(ValueError, match="one image"):
    transforms.prepare_images(np.zeros((10, 12), np.uint8))
