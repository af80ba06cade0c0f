"""LiteMedSAM's pre/post-processing against OpenCV, torch and the official script's steps."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reference import official as sam_official
from sampot_jax.sam import lite_medsam_transforms as lite
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor, processing, transforms
from tests.conftest import MONTGOMERY

pytestmark = pytest.mark.optimized  # compares with OpenCV, torch and the official script

cv2 = pytest.importorskip("cv2")


def cv2_area(image, new_h, new_w):
  out = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
  return out.reshape(out.shape[:2] + image.shape[2:])  # cv2 drops a trailing axis of 1


def official_preprocess(img_3c):
  """CVPR24_LiteMedSAM_infer.py's image steps, written out: resize_longest_side (cv2 INTER_AREA),
  min-max in float64, pad_image, torch.tensor(...).float()."""
  h, w = img_3c.shape[:2]
  scale = 256 * 1.0 / max(h, w)
  new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
  img = cv2.resize(img_3c, (new_w, new_h), interpolation=cv2.INTER_AREA)
  img = (img - img.min()) / np.clip(img.max() - img.min(), a_min=1e-8, a_max=None)
  img = np.pad(img, ((0, 256 - new_h), (0, 256 - new_w), (0, 0)))
  return img.astype(np.float32), (new_h, new_w)


# Sizes (H, W[, C]) -> (new_h, new_w): longest side to 256 (integer, fractional and enlarging
# factors, grayscale and RGB), plus other targets, 2 and 4 channels, and mixed (one axis enlarged).
CASES = [
    ((512, 512, 3), (256, 256)),  # 2x2: OpenCV's vectorised path, rounds half up
    ((512, 512), (256, 256)),
    ((1024, 768, 3), (256, 192)),  # 4x4: float32 block mean, rounds half to even
    ((768, 768), (256, 256)),  # 3x3: 1/9 is inexact in float32
    ((512, 1024, 3), (128, 256)),
    ((4020, 4892), (210, 256)),  # the Montgomery originals' size: fractional area
    ((4892, 4020, 3), (256, 210)),
    ((333, 517, 3), (165, 256)),
    ((1000, 700, 3), (256, 179)),
    ((257, 1003), (66, 256)),
    ((255, 300, 3), (218, 256)),  # longest side 300: still shrinking, fractional
    ((100, 37), (256, 95)),  # enlarging: the fixed-point bilinear fallback
    ((7, 5, 3), (256, 183)),
    ((300, 300, 2), (256, 256)),
    ((37, 41, 4), (256, 233)),
    ((90, 500, 3), (200, 256)),  # mixed: one axis enlarged, one shrunk
    ((1, 300, 3), (1, 256)),
    ((3, 1000), (1, 256)),
]


@pytest.mark.parametrize("shape,size", CASES)
def test_resize_area_is_bit_identical_to_cv2(shape, size):
  image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
  ours = lite.resize_area(image, *size)
  expected = cv2_area(image, *size)
  assert ours.shape == expected.shape and ours.dtype == np.uint8
  # Bit identical: the float32 sums run in OpenCV's order, so none differs (measured: 0 pixels).
  np.testing.assert_array_equal(ours, expected)


def test_resize_area_on_random_sizes_and_smooth_images(record_figure):
  rng = np.random.default_rng(7)
  differing = 0
  for i in range(60):
    h, w = (int(s) for s in rng.integers(1, 300, 2))
    new_h, new_w = (int(s) for s in rng.integers(1, 300, 2))
    channels = int(rng.choice([1, 3]))
    if i % 2:  # gradients: many exact ties between neighbours, not only noise
      y, x = np.mgrid[0:h, 0:w]
      image = np.repeat(((x * 3 + y * 5) % 256).astype(np.uint8)[..., None], channels, -1)
    else:
      image = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    differing += int((lite.resize_area(image, new_h, new_w) != cv2_area(image, new_h, new_w)).sum())
  record_figure("resize_area vs cv2, 60 random sizes: differing values", differing)
  assert differing == 0


def test_resize_area_rounds_ties_as_opencv():
  # A 2x2 block summing to 2 is a mean of 0.5: the 2x2 path rounds it up, the float path
  # (4x4, sum 8) rounds it half to even, down. Both must match OpenCV.
  two = np.array([[0, 1], [0, 1]], np.uint8)
  assert lite.resize_area(two, 1, 1)[0, 0] == cv2_area(two, 1, 1)[0, 0] == 1
  four = np.zeros((4, 4), np.uint8)
  four[:2, :] = 1
  assert lite.resize_area(four, 1, 1)[0, 0] == cv2_area(four, 1, 1)[0, 0] == 0


def test_resize_area_refuses_what_it_cannot_resize():
  with pytest.raises(ValueError, match="uint8"):
    lite.resize_area(np.zeros((4, 4), np.uint16), 2, 2)
  with pytest.raises(ValueError, match="at least 1x1"):
    lite.resize_area(np.zeros((4, 4), np.uint8), 0, 2)


@pytest.mark.parametrize("shape", [(512, 512), (333, 517), (700, 1000, 3), (200, 120)])
def test_preprocessing_equals_the_official_steps(shape):
  rng = np.random.default_rng(sum(shape))
  image = rng.integers(20, 230, shape, dtype=np.uint8)  # min/max not 0/255: the scaling matters
  rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
  expected, new_size = official_preprocess(rgb)
  pixels, input_size, original_size = lite.prepare_image(image)
  assert (input_size, original_size) == (new_size, shape[:2])
  assert pixels.shape == (256, 256, 3) and pixels.dtype == np.float32
  np.testing.assert_array_equal(pixels, expected)
  assert pixels[:new_size[0], :new_size[1]].min() == 0 and pixels.max() == 1
  assert not pixels[new_size[0]:].any() and not pixels[:, new_size[1]:].any()


def test_non_square_frame_and_constant_and_16_bit_images():
  pixels, input_size, original = lite.prepare_image(np.full((300, 600), 90, np.uint8))
  assert (input_size, original) == ((128, 256), (300, 600))
  assert not pixels.any()  # constant image: (x - min) / 1e-8 = 0, no division by zero
  # uint16: scaled to 0..255 by the image's own min..max (as the SAM path), then as uint8.
  wide = np.random.default_rng(0).integers(1000, 4096, (300, 451), dtype=np.uint16)
  pixels16, _, _ = lite.prepare_image(wide)
  pixels8, _, _ = lite.prepare_image(transforms.to_rgb_uint8(wide))
  np.testing.assert_array_equal(pixels16, pixels8)
  with pytest.raises(ValueError, match="would vanish"):
    lite.prepare_image(np.zeros((1, 1000), np.uint8))


def test_batches_share_one_size():
  images = np.random.default_rng(0).integers(0, 256, (2, 90, 120), dtype=np.uint8)
  pixels, input_size, original = lite.prepare_images(images)
  assert pixels.shape == (2, 256, 256, 3) and (input_size, original) == ((192, 256), (90, 120))
  np.testing.assert_array_equal(pixels[1], lite.prepare_image(images[1])[0])
  with pytest.raises(ValueError, match="mixes sizes"):
    lite.prepare_images([np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8)])


@pytest.mark.parametrize("original", [(512, 512), (333, 517), (1000, 700)])
def test_box_scaling(original):
  boxes = np.random.default_rng(1).uniform(0, 300, (3, 4))
  ratio = 256 / max(original)  # the official resize_box_to_256's one factor for both axes
  np.testing.assert_array_equal(lite.apply_boxes(boxes, original),
                                (boxes * ratio).astype(np.float32))
  # The official script truncates: new_box[i] = int(box[i] * ratio).
  official = np.array([[int(v * ratio) for v in box] for box in boxes], np.float32)
  np.testing.assert_array_equal(lite.apply_boxes(boxes, original, truncate=True), official)
  # jnp: differentiable with respect to the corners, d(model box)/d(box) = ratio.
  corners = jnp.asarray(boxes, jnp.float32)
  np.testing.assert_allclose(lite.apply_boxes(corners, original), boxes * ratio, rtol=1e-6)
  grad = jax.grad(lambda b: lite.apply_boxes(b, original).sum())(corners)
  np.testing.assert_allclose(grad, np.full((3, 4), ratio, np.float32), rtol=1e-7)
  with pytest.raises(ValueError, match="numpy"):
    lite.apply_boxes(corners, original, truncate=True)


@pytest.mark.parametrize("input_size,original", [((256, 256), (512, 512)),
                                                 ((165, 256), (333, 517)),
                                                 ((256, 179), (1000, 700)),
                                                 ((218, 256), (255, 300))])
def test_postprocess_matches_torch_interpolate(input_size, original, record_figure):
  torch = pytest.importorskip("torch")
  from torch.nn import functional as F
  low_res = torch.randn(2, 1, 256, 256, generator=torch.Generator().manual_seed(0)) * 4
  # MedSAM_Lite.postprocess_masks, written out: crop to the resized region, then bilinear.
  expected = F.interpolate(low_res[..., :input_size[0], :input_size[1]], original,
                           mode="bilinear", align_corners=False).numpy()
  post = jax.jit(lambda x: lite.postprocess_masks(x, input_size, original))
  ours = np.asarray(post(jnp.asarray(low_res.numpy())))
  assert ours.shape == expected.shape
  # Same weights summed in another order: float32 rounding only.
  err = sam_official.errors(expected, ours)
  err["mask_flips"] = int(((ours > 0) != (expected > 0)).sum())
  record_figure(f"lite postprocess_masks{input_size}->{original}", err)
  # Measured: max_rel below 1.7e-7 (2e-6 absolute on logits up to 17), 0 mask flips.
  assert err["max_rel"] < 2e-6, err
  assert err["mask_flips"] <= 2, err  # a flip needs a logit within ~2e-6 of 0


def test_postprocess_is_differentiable_and_checks_the_logit_size():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 256, 256)), jnp.float32)
  grad = jax.grad(lambda x: lite.postprocess_masks(x, (165, 256), (333, 517)).sum())(logits)
  # Every logit inside the resized region feeds the output; the padding does not.
  assert (grad[0, :165] > 0).all() and not grad[0, 165:].any()
  with pytest.raises(ValueError, match="256x256"):
    lite.postprocess_masks(jnp.zeros((1, 64, 64)), (64, 64), (100, 100))


def test_processing_is_picked_per_variant():
  assert processing.processing_for(sam_model.sam_config("vit_b")).name == "sam"
  mobile = ml_collections.ConfigDict({"variant": "mobile_sam"})
  assert processing.processing_for(mobile).name == "sam"
  lite_config = ml_collections.ConfigDict({"variant": "lite_medsam", "img_size": 256})
  assert processing.processing_for(lite_config).prepare_images is lite.prepare_images
  assert processing.processing_for(
      sam_model.sam_config("vit_b", preprocess="lite_medsam")).name == "lite_medsam"
  with pytest.raises(ValueError, match="No pre/post-processing known"):
    processing.processing_for(ml_collections.ConfigDict({"variant": "efficient_sam"}))
  with pytest.raises(ValueError, match="is not one of"):
    processing.processing_for(ml_collections.ConfigDict({"variant": "vit_b", "preprocess": "x"}))


def test_predictor_uses_the_lite_processing(monkeypatch):
  """The wiring only: the encoder and decoder are stand-ins that record what they receive."""
  config = ml_collections.ConfigDict({"variant": "lite_medsam", "img_size": 256})
  seen = {}

  def encode(params, pixels, config):
    seen["pixels"] = np.asarray(pixels)
    return jnp.zeros((len(pixels), 64, 64, 8))

  low_res = jnp.asarray(np.random.default_rng(0).normal(size=(1, 1, 256, 256)), jnp.float32)

  def decode(params, embeddings, config, points=None, labels=None, boxes=None, **kwargs):
    seen["boxes"] = np.asarray(boxes)
    return low_res, jnp.zeros((1, 1))

  monkeypatch.setattr(sam_model, "encode_jit", encode)
  monkeypatch.setattr(sam_model, "decode", decode)
  image = np.random.default_rng(1).integers(0, 256, (333, 517), dtype=np.uint8)
  emb, frame = predictor.encode_images(None, image[None], config)
  np.testing.assert_array_equal(seen["pixels"][0], lite.prepare_image(image)[0])
  assert frame == predictor.ImageFrame((165, 256), (333, 517))
  box = np.array([[10.0, 20.0, 300.0, 310.0]])
  masks, _, _ = predictor.predict(None, emb, frame, config, boxes=box, multimask_output=False)
  np.testing.assert_array_equal(seen["boxes"], lite.apply_boxes(box, (333, 517)))
  assert masks.shape == (1, 1, 333, 517)
  np.testing.assert_array_equal(masks, lite.postprocess_masks(low_res, (165, 256), (333, 517)) > 0)


@pytest.mark.needs_data
def test_resize_area_on_montgomery(record_figure):
  from PIL import Image
  paths = sorted((MONTGOMERY / "images").glob("*.png"))
  assert len(paths) == 138
  differing = {"512x512->256 (2x2 path)": 0, "crop 497x389->256x200 (fractional path)": 0}
  for path in paths:
    gray = np.asarray(Image.open(path))
    rgb = np.repeat(gray[..., None], 3, -1)  # as the official script gets its images
    differing["512x512->256 (2x2 path)"] += int(
        (lite.resize_area(rgb, 256, 256) != cv2_area(rgb, 256, 256)).sum())
    crop = np.ascontiguousarray(rgb[7:504, 60:449])  # real content at a non-integer factor
    size = lite.preprocess_shape(*crop.shape[:2])
    differing["crop 497x389->256x200 (fractional path)"] += int(
        (lite.resize_area(crop, *size) != cv2_area(crop, *size)).sum())
  record_figure("resize_area vs cv2 on 138 Montgomery images: differing values", differing)
  assert differing == {k: 0 for k in differing}
