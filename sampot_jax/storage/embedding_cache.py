"""Image embeddings on disk, written once per (image, model) and reused.

    cache = EmbeddingCache(directory, sam.key, sam.config)
    embeddings, encoded = cache.embeddings(images, encode)  # encode: (B, H, W[, 3]) -> (B, g, g, C)

The cache knows nothing of the model but its key and config (what it hashes): the caller
hands it the encoder, so storage stays below the models.

Layout: DIRECTORY/<model>/<image>.npz holding `embedding`, float32 (g, g, C),
and `crc32`, the checksum of its bytes (checkpoints.array_crc32, as kept for
every array of a SAM port). <model> hashes the checkpoint key (sam.frozen.from_config:
the official file's sha256, or a hash of random params) with the SAM config;
<image> hashes the image's shape, dtype and bytes. So a new checkpoint or config
never meets old embeddings, and re-running SAMPOT with other settings encodes
nothing. Files are written to a temporary name and renamed, so a killed run
leaves no half file.

A file that cannot be read, or whose embedding does not match its crc32 (a
flipped bit on disk would otherwise turn into NaNs or wrong masks downstream),
is not used: the image is encoded again and the file rewritten, with a logged
warning. The cache is derived data, so re-encoding loses nothing but one
encoder call, and the warning shows that the disk damaged a file. (Files of the
earlier layout, <image>.npy without a checksum, are not read.)
"""
import hashlib
import json
import os
from pathlib import Path
import tempfile
from typing import Callable
import zipfile

from absl import logging
import numpy as np
from tqdm import tqdm

from sampot_jax.runtime import sharding
from sampot_jax.storage import checkpoints


def image_key(image: np.ndarray) -> str:
  """sha256 (32 hex) of an image's shape, dtype and bytes."""
  image = np.ascontiguousarray(image)
  digest = hashlib.sha256(f"{image.shape}:{image.dtype.str}:".encode())
  digest.update(image.tobytes())
  return digest.hexdigest()[:32]


def model_key(checkpoint_key: str, sam_config) -> str:
  """Folder name of one (checkpoint, SAM config) pair."""
  blob = json.dumps({"checkpoint": checkpoint_key, "config": json.loads(sam_config.to_json())},
                    sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


class EmbeddingCache:
  """Embeddings of one model (its weights' key + its config) under `directory`."""

  def __init__(self, directory, checkpoint_key: str, model_config):
    self.directory = Path(directory).expanduser() / model_key(checkpoint_key, model_config)

  def path(self, image: np.ndarray) -> Path:
    return self.directory / f"{image_key(image)}.npz"

  def _write(self, path: Path, embedding: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    embedding = np.ascontiguousarray(embedding, np.float32)
    crc32 = np.uint32(checkpoints.array_crc32(embedding))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, embedding=embedding, crc32=crc32)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise

  @staticmethod
  def _read(path: Path) -> np.ndarray | None:
    """The embedding stored at `path` if it passes its checks, else None (warned)."""
    try:
      with np.load(path, allow_pickle=False) as stored:
        embedding, crc32 = stored["embedding"], stored["crc32"]
    except (ValueError, OSError, KeyError, EOFError, AttributeError, TypeError,
            zipfile.BadZipFile) as e:  # Not an npz, truncated, a member missing.
      problem = f"cannot be read ({type(e).__name__}: {e})"
    else:
      if embedding.dtype != np.float32 or embedding.ndim != 3 or crc32.shape != ():
        problem = (f"holds a {embedding.dtype} {embedding.shape} embedding and a crc32 of "
                   f"shape {crc32.shape}, not float32 (g, g, C) and one number")
      elif int(crc32) != checkpoints.array_crc32(embedding):
        problem = (f"does not match its checksum (crc32 {checkpoints.array_crc32(embedding)}, "
                   f"stored {int(crc32)}): the file was damaged on disk")
      else:
        return embedding
    logging.warning("Embedding cache: %s %s; encoding the image again and rewriting it.",
                    path, problem)
    return None

  def embeddings(self, images, encode: Callable, batch_size: int = 8):
    """Embeddings of a batch, encoding only the images not on disk yet.

    Args:
      images: (N, H, W[, 3]) uint8/uint16 of one size, or a list of such images.
      encode: (B, H, W[, 3]) -> (B, g, g, C): the model the cache is keyed by (not checked:
        the key is), e.g. lambda batch: predictor.encode_images(params, batch, config)[0].
      batch_size: images per encoder call (the last call is padded to it).

    Returns:
      (embeddings (N, g, g, C) float32 numpy, number encoded now).
    """
    images = [np.asarray(im) for im in images]
    if not images:
      raise ValueError("images is an empty batch; pass at least one image.")
    sizes = sorted({im.shape[:2] for im in images})
    if len(sizes) > 1:
      raise ValueError(f"images mixes sizes {sizes}; a batch must share one (H, W). Group the "
                       "images by size, or resize/pad them to one size first.")
    paths = [self.path(im) for im in images]
    out = [None] * len(images)
    missing = []
    for i, path in enumerate(paths):
      if path.exists():
        out[i] = self._read(path)
      if out[i] is None:
        missing.append(i)  # Absent, unreadable or damaged: encode (again) and write.
    step = min(batch_size, len(missing)) or 1
    for start in tqdm(range(0, len(missing), step), desc="image encoder", unit="batch",
                      disable=len(missing) <= step):
      chunk = missing[start:start + step]
      # Full batches only: the encoder compiles once per run.
      batch, _ = sharding.pad_batch(np.stack([images[i] for i in chunk]), step)
      encoded = encode(batch)
      for i, emb in zip(chunk, np.asarray(encoded)):
        self._write(paths[i], emb)
        out[i] = emb
    return np.stack(out).astype(np.float32), len(missing)
