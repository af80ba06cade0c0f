"""The functional API on a tiny model: jit/vmap, gradients w.r.t. clicks, dtypes, bad prompts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampot_jax.sam import frozen
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
                        frozen.random_sam_params(config, seed=0))
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


@pytest.mark.optimized  # the gradient against a float64 central difference
def test_gradient_wrt_click_matches_finite_differences(tiny):
  config, params, _, embeddings, frame = tiny
  with jax.enable_x64(True):
    # In float64 a central difference is accurate enough to check the gradient tightly.
    params64, emb64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, embeddings[:1]))
    labels = jnp.ones((1, 1), jnp.int32)

    @jax.jit  # one program per function, not one per operation
    def soft_area(xy):
      low_res, _ = predictor.decode_clicks(params64, emb64, xy[None, None], labels, frame, config)
      assert low_res.dtype == jnp.float64
      return jax.nn.sigmoid(4.0 * low_res).mean()

    for xy in ([30.0, 40.0], [77.3, 61.8]):
      xy = jnp.array(xy, jnp.float64)
      grad = np.asarray(jax.jit(jax.grad(soft_area))(xy))
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
    (dict(boxes=np.array([[50.0, 10.0, 20.0, 60.0]])), "box of row 0 .* x1 < x0"),
    (dict(boxes=np.array([[5.0, 10.0, 20.0, 60.0], [5.0, 10.0, 20.0, 95.0]])), "row 1 .* outside"),
    (dict(boxes=np.array([[5.0, np.nan, 20.0, 60.0]])), "row 0 .* finite"),
    (dict(), "at least one prompt"),
])
def test_bad_prompts_get_clear_errors(tiny, kwargs, message):
  config, params, _, embeddings, frame = tiny
  with pytest.raises(ValueError, match=message):
    predictor.predict(params, embeddings[:1], frame, config, **kwargs)


def test_box_prompt_vectors_decode_as_predict_boxes(tiny):
  config, params, _, embeddings, frame = tiny
  boxes = np.array([[10.0, 12.0, 70.0, 60.0], [30.0, 5.0, 110.0, 80.0], [0.0, 0.0, 119.0, 89.0]])
  low_res, iou = predictor.decode_prompts(params, embeddings, boxes, frame, config)
  _, want_iou, want_low_res = predictor.predict(params, embeddings, frame, config, boxes=boxes,
                                                multimask_output=False)
  np.testing.assert_allclose(low_res, want_low_res, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(iou, want_iou, rtol=1e-5, atol=1e-6)
  # A box and a click together: six values, the click last.
  both = np.concatenate([boxes, [[40.0, 30.0], [70.0, 40.0], [60.0, 45.0]]], axis=1)
  low_both, _ = predictor.decode_prompts(params, embeddings, both, frame, config)
  _, _, want_both = predictor.predict(params, embeddings, frame, config, boxes=boxes,
                                      points=both[:, None, 4:], labels=np.ones((3, 1)),
                                      multimask_output=False)
  np.testing.assert_allclose(low_both, want_both, rtol=1e-5, atol=1e-5)


@pytest.mark.optimized  # the gradient against a float64 central difference
def test_gradient_wrt_box_corners_matches_finite_differences(tiny):
  config, params, _, embeddings, frame = tiny
  with jax.enable_x64(True):
    params64, emb64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, embeddings[:1]))

    @jax.jit  # one program per function, not one per operation
    def soft_area(box):
      low_res, _ = predictor.decode_prompts(params64, emb64, box[None], frame, config)
      return jax.nn.sigmoid(4.0 * low_res).mean()

    box = jnp.array([20.0, 15.5, 80.3, 66.0], jnp.float64)
    grad = np.asarray(jax.jit(jax.grad(soft_area))(box))
    h = 1e-4
    fd = np.array([(soft_area(box + h * e) - soft_area(box - h * e)) / (2 * h) for e in np.eye(4)])
    assert np.all(np.abs(grad) > 1e-7)  # every corner moves the mask
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_image_side_computed_once_decodes_the_same(tiny):
  """decode_prompts with the decoder's image-side projections computed beforehand (as SAMPOT's
  loop does, once per image) = the plain decoder, for clicks, boxes, both, multimask, and the
  gradient with respect to the prompt."""
  config, params, _, embeddings, frame = tiny
  side = predictor.image_side(params, embeddings, config)
  hw = embeddings.shape[1] * embeddings.shape[2]
  assert {k: v.shape for k, v in side.items()} == {
      k: (3, hw, config.prompt_embed_dim // 2) for k in ("k", "v", "q")}
  boxes = np.array([[10.0, 12.0, 70.0, 60.0], [30.0, 5.0, 110.0, 80.0], [0.0, 0.0, 119.0, 89.0]])
  clicks = np.array([[40.0, 30.0], [70.0, 40.0], [60.0, 45.0]])
  for prompts in (clicks, boxes, np.concatenate([boxes, clicks], axis=1)):
    for multimask in (False, True):
      want = predictor.decode_prompts(params, embeddings, prompts, frame, config, multimask)
      got = predictor.decode_prompts(params, embeddings, prompts, frame, config, multimask,
                                     image_side=side)
      for w, g in zip(want, got):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)

  def soft_area(box, image_side=None):
    low_res, _ = predictor.decode_prompts(params, embeddings[:1], box[None], frame, config,
                                          image_side=image_side)
    return jax.nn.sigmoid(4.0 * low_res).mean()

  box = jnp.asarray(boxes[0], jnp.float32)
  one = jax.tree.map(lambda x: x[:1], side)
  np.testing.assert_allclose(jax.grad(soft_area)(box, one), jax.grad(soft_area)(box),
                             rtol=1e-5, atol=1e-9)
  with pytest.raises(ValueError, match="mask_input"):
    sam_model.decode(params, embeddings, config, boxes=boxes, image_side=side,
                     mask_input=jnp.zeros((3, 32, 32)))


def test_several_boxes_per_image(tiny):
  config, params, _, embeddings, frame = tiny
  boxes = np.array([[[10.0, 12.0, 70.0, 60.0], [30.0, 5.0, 110.0, 80.0]]] * 3)  # (3, 2, 4)
  masks, ious = predictor.prompt_masks(params, config, embeddings, frame, boxes)
  assert masks.shape == (3, 2, 90, 120) and ious.shape == (3, 2)
  for k in range(2):
    want, want_iou, _ = predictor.predict(params, embeddings, frame, config, boxes=boxes[:, k],
                                          multimask_output=False)
    np.testing.assert_array_equal(masks[:, k], want[:, 0])


def test_prompt_vectors_are_checked_and_constrained():
  with pytest.raises(ValueError, match="image 'b' .* x0 < x1"):
    predictor.check_prompts([[1.0, 1.0, 5.0, 5.0], [6.0, 1.0, 5.0, 5.0]], (10, 10), ids=["a", "b"])
  with pytest.raises(ValueError, match=r"outside the 10x8 .* \(x0, y0, x1, y1\)"):
    predictor.check_prompts([[1.0, 1.0, 10.0, 5.0]], (8, 10))
  with pytest.raises(ValueError, match="3 values"):
    predictor.check_prompts([[1.0, 1.0, 5.0]], (8, 10))
  moved = np.asarray(predictor.constrain_prompts(
      jnp.array([[-3.0, 2.0, 12.0, 2.5], [4.0, 4.0, 3.0, 3.0]]), (8, 10), min_box_size=2.0))
  np.testing.assert_allclose(moved[0], [0.0, 1.25, 9.0, 3.25])  # clipped; too flat: re-centred
  np.testing.assert_allclose(moved[1], [2.5, 2.5, 4.5, 4.5])  # crossed corners: a 2 px box
  assert np.all(moved[:, 2] > moved[:, 0]) and np.all(moved[:, 3] > moved[:, 1])


def test_click_prompts_on_a_box_model_warn(tiny, caplog):
  config, params, _, embeddings, frame = tiny
  lite = config.copy_and_resolve_references()
  lite.variant = "lite_medsam"
  lite.preprocess = "sam"  # this tiny model's processing; only the variant name matters here
  with caplog.at_level("WARNING"):
    predictor.predict(params, embeddings[:1], frame, lite, points=np.array([[[30.0, 40.0]]]),
                      labels=np.ones((1, 1)))
  assert "trained on box prompts only" in caplog.text

