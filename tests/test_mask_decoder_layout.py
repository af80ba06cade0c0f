"""The decoder's phase layout: ConvTranspose2x2 + interleave_phases is torch's ConvTranspose2d."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampot_jax.sam.mask_decoder import ConvTranspose2x2, interleave_phases

pytestmark = pytest.mark.optimized  # compares with torch's ConvTranspose2d


def conv_transpose_2x2_loops(x, kernel, bias):
  """(N, h, w, c), (2, 2, c, o) -> (N, 2h, 2w, o), one output patch per input pixel."""
  n, h, w, _ = x.shape
  out = np.zeros((n, 2 * h, 2 * w, kernel.shape[-1]))
  for i in range(h):
    for j in range(w):
      for p in range(2):
        for q in range(2):
          out[:, 2 * i + p, 2 * j + q] = x[:, i, j] @ kernel[p, q] + bias
  return out


def test_two_upscalings_in_phase_layout_match_the_interleaved_convolutions():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
  first, second = ConvTranspose2x2(6), ConvTranspose2x2(3)
  v1 = first.init(jax.random.key(0), x)
  y1 = first.apply(v1, x)                       # (2, 3, 5, 2, 2, 6)
  v2 = second.init(jax.random.key(1), y1)
  y2 = second.apply(v2, y1)                     # (2, 3, 5, 2, 2, 2, 2, 3)
  p1, p2 = v1["params"], v2["params"]
  ref1 = conv_transpose_2x2_loops(x, np.asarray(p1["kernel"]), np.asarray(p1["bias"]))
  ref2 = conv_transpose_2x2_loops(ref1, np.asarray(p2["kernel"]), np.asarray(p2["bias"]))
  # Channels last in the phase layout: move them before the phases to interleave.
  got1 = interleave_phases(jnp.moveaxis(y1, -1, 1), 1)
  got2 = interleave_phases(jnp.moveaxis(y2, -1, 1), 2)
  np.testing.assert_allclose(np.moveaxis(np.asarray(got1), 1, -1), ref1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.moveaxis(np.asarray(got2), 1, -1), ref2, rtol=1e-5, atol=1e-5)
  assert got2.shape == (2, 3, 12, 20)


def test_interleave_phases_rejects_a_shape_without_the_phase_pairs():
  with pytest.raises(ValueError, match="pairs of 2x2 phases"):
    interleave_phases(jnp.zeros((4, 4, 2, 3)), 1)
