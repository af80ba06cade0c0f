"""Tests of the DiceRegressor model and its pure `score` function."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampot_jax.regressor import model as regressor

RES = 32


def tiny_model(**kw):
  defaults = dict(features=(4, 4, 8, 8, 8), resolution=RES)
  defaults.update(kw)
  return regressor.DiceRegressor(**defaults)


def inputs(batch=3, size=RES, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  image = jax.random.uniform(k1, (batch, size, size))
  mask = jax.random.uniform(k2, (batch, size, size))
  return image, mask


@pytest.mark.parametrize("kw", [
    {},
    {"coord_channels": True},
    {"readout": "mean"},
    {"strides": (4, 2, 2, 1, 1), "kernel_size": (4, 3, 3, 3, 3)},
])
def test_output_shape_and_sigmoid_range(kw):
  model = tiny_model(**kw)
  variables = regressor.init_variables(model, jax.random.key(0))
  image, mask = inputs(batch=5)
  # Extreme inputs push the logit far out; the output must stay in [0, 1].
  for scale in (1.0, 1e4):
    out = regressor.score(variables, image * scale, mask * scale, model=model)
    assert out.shape == (5,)
    assert out.dtype == jnp.float32
    assert bool(jnp.all((out >= 0) & (out <= 1)))


def test_channel_axis_is_optional():
  model = tiny_model()
  variables = regressor.init_variables(model, jax.random.key(0))
  image, mask = inputs()
  a = regressor.score(variables, image, mask, model=model)
  b = regressor.score(variables, image[..., None], mask[..., None], model=model)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_other_resolution_is_resized_inside():
  model = tiny_model()
  variables = regressor.init_variables(model, jax.random.key(0))
  # Smooth content rendered at two sizes: the model must see nearly the same
  # inputs once the larger frame is resized to its resolution inside.
  coarse = jax.random.uniform(jax.random.key(3), (2, 3, 6, 6))
  at = lambda size: jax.image.resize(coarse, (2, 3, size, size), "linear")
  small, big = at(RES), at(2 * RES)
  near = regressor.prepare_inputs(big[0], big[1], RES)
  diff = np.abs(np.asarray(near - regressor.prepare_inputs(small[0], small[1],
                                                           RES)))
  assert diff.mean() < 0.01 and diff.max() < 0.1, (diff.mean(), diff.max())
  assert near.shape == (3, RES, RES, 2)
  # Image and mask may come at different sizes (SAM's 256x256 low-res mask).
  mixed = regressor.score(variables, small[0], big[1], model=model)
  assert mixed.shape == (3,)
  np.testing.assert_allclose(
      np.asarray(mixed),
      np.asarray(model.apply(variables, small[0], near[..., 1])), atol=1e-6)


def test_soft_mask_gradient_is_finite_and_nonzero():
  model = tiny_model(coord_channels=True)
  variables = regressor.init_variables(model, jax.random.key(1))
  image, _ = inputs(batch=2)
  logits = jax.random.normal(jax.random.key(2), (2, 2 * RES, 2 * RES)) * 5
  scorer = regressor.make_scorer(model)

  @jax.jit
  def grad_fn(logits):
    return jax.grad(
        lambda l: scorer(variables, image, jax.nn.sigmoid(10 * l)).sum())(
            logits)

  g = grad_fn(logits)
  assert g.shape == logits.shape
  assert bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(g).max()) > 0


def test_score_under_vmap_matches_batch():
  model = tiny_model()
  variables = regressor.init_variables(model, jax.random.key(0))
  image, mask = inputs(batch=4)
  batched = regressor.score(variables, image, mask, model=model)
  one = lambda i, m: regressor.score(variables, i[None], m[None],
                                     model=model)[0]
  mapped = jax.jit(jax.vmap(one))(image, mask)
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched),
                             rtol=1e-5, atol=1e-6)


def test_batchnorm_train_uses_batch_stats_eval_does_not():
  model = tiny_model()
  variables = regressor.init_variables(model, jax.random.key(0))
  image, mask = inputs(batch=4)
  image2, mask2 = inputs(batch=4, seed=7)
  # Replace examples 1..3: in eval mode example 0's score is unchanged, in
  # train mode it changes, since the batch statistics change.
  swap = lambda a, b: a.at[1:].set(b[1:])
  ev = lambda i, m: model.apply(variables, i, m, train=False)
  np.testing.assert_array_equal(
      np.asarray(ev(image, mask)[0]),
      np.asarray(ev(swap(image, image2), swap(mask, mask2))[0]))
  tr = lambda i, m: model.apply(variables, i, m, train=True,
                                mutable=["batch_stats"])
  out_a, stats = tr(image, mask)
  out_b, _ = tr(swap(image, image2), swap(mask, mask2))
  assert abs(float(out_a[0]) - float(out_b[0])) > 1e-6
  # Train mode updates the running averages; eval mode reads them.
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(stats["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("image_shape,mask_shape,match", [
    ((2, RES, RES), (3, RES, RES), "batch"),
    ((2, RES, RES, 3), (2, RES, RES), "image has shape"),
    ((RES, RES), (RES, RES), "batch axis"),
    ((2, RES, RES + 1), (2, RES, RES), "square"),
])
def test_bad_input_names_the_problem(image_shape, mask_shape, match):
  model = tiny_model()
  variables = regressor.init_variables(model, jax.random.key(0))
  with pytest.raises(ValueError, match=match):
    regressor.score(variables, jnp.zeros(image_shape), jnp.zeros(mask_shape),
                    model=model)


def test_bad_architecture_names_the_field():
  model = tiny_model(strides=(2, 2))
  with pytest.raises(ValueError, match="strides"):
    regressor.init_variables(model, jax.random.key(0))
  model = tiny_model(readout="max")
  with pytest.raises(ValueError, match="readout"):
    regressor.init_variables(model, jax.random.key(0))


def test_from_config_round_trips_fields():
  cfg = dict(features=[4, 4, 8, 8, 8], strides=[4, 2, 2, 1, 1],
             kernel_size=[4, 3, 3, 3, 3], resolution=RES,
             coord_channels=True, readout="flatten", negative_slope=0.2,
             bn_momentum=0.8)
  model = regressor.from_config(cfg)
  assert model.features == (4, 4, 8, 8, 8)
  assert model.kernel_size == (4, 3, 3, 3, 3)
  assert model.coord_channels and model.negative_slope == 0.2
