"""A cached SAM embedding that changed on disk is not reused: its crc32 is checked."""
import logging

import jax.numpy as jnp
import numpy as np
import pytest

from sampot_jax.sam import model as sam_model
from sampot_jax.storage import checkpoints
from sampot_jax.storage import embedding_cache


class Encoder:
  """Stands in for the image encoder: a distinct (2, 2, 3) embedding per image."""

  def __init__(self):
    self.images = 0

  def __call__(self, images):
    self.images += len(images)
    means = jnp.asarray(images, jnp.float32).mean((1, 2))
    return means[:, None, None, None] + jnp.arange(12.0).reshape(1, 2, 2, 3)


@pytest.fixture
def cached(tmp_path):
  """(cache, images, embeddings as first computed), all three written to disk."""
  config = sam_model.sam_config("vit_b", img_size=32)
  images = np.random.default_rng(0).integers(0, 256, (3, 12, 12), dtype=np.uint8)
  cache = embedding_cache.EmbeddingCache(tmp_path, "ckpt", config)
  first, encoded = cache.embeddings(images, Encoder())
  assert encoded == 3
  return cache, images, first


def _rerun(cache, images, caplog):
  encoder = Encoder()
  with caplog.at_level(logging.WARNING):
    got, encoded = cache.embeddings(images, encoder)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  return got, encoded, warnings


def test_a_flipped_bit_is_not_reused(cached, caplog):
  cache, images, first = cached
  path = cache.path(images[1])
  data = bytearray(path.read_bytes())
  where = data.find(first[1].tobytes())
  assert where > 0  # The embedding's bytes are stored as they are.
  data[where + 17] ^= 0x10  # One bit of one float32.
  path.write_bytes(bytes(data))
  got, encoded, warnings = _rerun(cache, images, caplog)
  assert encoded == 1  # That image only, encoded again...
  np.testing.assert_array_equal(got, first)  # ... so nothing damaged reaches the caller,
  assert len(warnings) == 1 and str(path) in warnings[0] and "again" in warnings[0], warnings
  _, encoded, _ = _rerun(cache, images, caplog)
  assert encoded == 0  # ... and the file was rewritten.


def test_an_altered_embedding_in_a_valid_file_fails_its_checksum(cached, caplog):
  """The file is a well-formed npz (its zip CRCs agree), the embedding is not the one
  whose crc32 was stored: only the project's own checksum can tell."""
  cache, images, first = cached
  path = cache.path(images[0])
  with np.load(path) as stored:
    crc32 = stored["crc32"]
  assert int(crc32) == checkpoints.array_crc32(first[0])
  altered = first[0].copy()
  altered[0, 0, 0] = np.nan
  np.savez(path, embedding=altered, crc32=crc32)
  got, encoded, warnings = _rerun(cache, images, caplog)
  assert encoded == 1 and not np.isnan(got).any()
  np.testing.assert_array_equal(got, first)
  assert "checksum" in warnings[0] and str(path) in warnings[0], warnings


def test_a_file_without_a_checksum_is_not_reused(cached, caplog):
  cache, images, first = cached
  path = cache.path(images[2])
  np.savez(path, embedding=first[2])  # No crc32 member.
  _, encoded, warnings = _rerun(cache, images, caplog)
  assert encoded == 1 and str(path) in warnings[0]
