"""The functional API on a tiny model: jit/vmap, gradients w.r.t. clicks, dtypes, bad prompts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampot_jax import models
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor

TINY = dict(img_size=128, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
            window_size=3, prompt_embed_dim=32, transformer_mlp_dim=64, iou_head_hidden_dim=32)


@pytest.fixture(scope="module")
def tiny():
  config = sam_model.sam_config("vit_b", **TINY)
  # Drawn in numpy (flax's init would compile every op first); random init leaves some tensors
  # constant, so perturb them all: every term shapes the output.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: jnp.asarray(x + 0.05 * rng.standard_normal(x.shape), jnp.float32),
                        models.random_sam_params(config, seed=0))
  images = np.random.default_rng(0).integers(0, 256, (3, 90, 120), dtype=np.uint8)
  embeddings, frame = predictor.encode_images(params, images, config)
  return config, params, images, embeddings, frame


def test_encode_is_batched_and_chunking_does_not_change_it(tiny):
  config, params, images, embeddings, frame = tiny
  assert embeddings.shape == (3, 8, 8, 32) and embeddings.dtype == jnp.float32
  assert frame.original_size == (90, 120) and frame.input_size == (96, 128)
  chunked, _ = predictor.encode_images(params, images, config, batch_size=2)
  # Another batch size changes XLA's matmul blocking: float32 rounding (measured 1.7e-6).
  np.testing.assert_allclose(chunked, embeddings, rtol=0, atol=1e-5)
  single, _ = predictor.encode_images(params, images[1:2], config)
  np.testing.assert_allclose(single[0], embeddings[1], rtol=0, atol=1e-5)


def test_decode_clicks_jits_and_vmaps(tiny):
  config, params, _, embeddings, frame = tiny
  points = jnp.array([[[30.0, 40.0]], [[60.0, 20.5]], [[100.0, 70.0]]])
  labels = jnp.ones((3, 1), jnp.int32)
  low_res, iou = predictor.decode_clicks(params, embeddings, points, labels, frame, config)
  assert low_res.shape == (3, 1, 32, 32) and iou.shape == (3, 1)

  decode = jax.jit(lambda e, p: predictor.decode_clicks(params, e, p, labels[:1], frame, config))
  per_image = jax.vmap(lambda e, p: decode(e[None], p[None]))(embeddings, points)
  np.testing.assert_allclose(per_image[0][:, 0], low_res, rtol=0, atol=1e-5)
  np.testing.assert_allclose(per_image[1][:, 0], iou, rtol=0, atol=1e-6)


def test_gradient_wrt_click_matches_finite_differences(tiny):
  config, params, _, embeddings, frame = tiny
  with jax.enable_x64(True):
    # In float64 a central difference is accurate enough to check the gradient tightly.
    params64, emb64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, embeddings[:1]))
    labels = jnp.ones((1, 1), jnp.int32)

    def soft_area(xy):
      low_res, _ = predictor.decode_clicks(params64, emb64, xy[None, None], labels, frame, config)
      assert low_res.dtype == jnp.float64
      return jax.nn.sigmoid(4.0 * low_res).mean()

    for xy in ([30.0, 40.0], [77.3, 61.8]):
      xy = jnp.array(xy, jnp.float64)
      grad = np.asarray(jax.grad(soft_area)(xy))
      h = 1e-4  # pixels
      fd = np.array([(soft_area(xy + h * e) - soft_area(xy - h * e)) / (2 * h) for e in np.eye(2)])
      assert np.all(np.isfinite(grad))
      assert np.abs(grad).min() > 1e-6  # the click does move the mask
      np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_bfloat16_encoder_keeps_float32_params_and_stays_close(tiny):
  config, params, images, embeddings, _ = tiny
  bf16 = sam_model.sam_config("vit_b", **TINY, encoder_dtype="bfloat16")
  low, _ = predictor.encode_images(params, images, bf16)
  assert low.dtype == jnp.float32  # the neck and the cached embedding stay float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  rel = float(jnp.abs(low - embeddings).max() / jnp.abs(embeddings).max())
  assert 0 < rel < 0.1, rel  # bfloat16 has 8 bits of mantissa: a few percent, not exact


def test_predict_returns_masks_at_original_size(tiny):
  config, params, _, embeddings, frame = tiny
  masks, iou, low_res = predictor.predict(params, embeddings, frame, config,
                                          points=np.array([[[30, 40]], [[60, 20]], [[10, 80]]]),
                                          labels=np.ones((3, 1)), multimask_output=True)
  assert masks.shape == (3, 3, 90, 120) and masks.dtype == jnp.bool_
  assert iou.shape == (3, 3) and low_res.shape == (3, 3, 32, 32)
  boxed, _, _ = predictor.predict(params, embeddings, frame, config,
                                  boxes=np.array([[10, 10, 50, 60]] * 3), multimask_output=False)
  assert boxed.shape == (3, 1, 90, 120)


@pytest.mark.parametrize("kwargs,message", [
    (dict(points=np.array([[[130.0, 40.0]]]), labels=np.ones((1, 1))), "outside the 120x90"),
    (dict(points=np.array([[[-1.0, 40.0]]]), labels=np.ones((1, 1))), "outside"),
    (dict(points=np.array([[[np.nan, 40.0]]]), labels=np.ones((1, 1))), "NaN"),
    (dict(points=np.array([[[10.0, 40.0]]]), labels=np.ones((1, 2))), "labels must have shape"),
    (dict(points=np.array([[10.0, 40.0]]), labels=np.ones((1,))), "expected \\(B, N, 2\\)"),
    (dict(points=np.array([[[10.0, 40.0]]]), labels=np.full((1, 1), 3)), "labels must be 1"),
    (dict(boxes=np.array([[50.0, 10.0, 20.0, 60.0]])), "x1 < x0"),
    (dict(), "at least one prompt"),
])
def test_bad_prompts_get_clear_errors(tiny, kwargs, message):
  config, params, _, embeddings, frame = tiny
  with pytest.raises(ValueError, match=message):
    predictor.predict(params, embeddings[:1], frame, config, **kwargs)
