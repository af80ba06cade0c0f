"""Task 'smoke' (configs/smoke.py): the whole evaluation on generated data and random models.

Writes `config.num_fake_images` synthetic radiographs to WORKDIR/data (once),
keeps the embedding cache in WORKDIR/embeddings, then runs evaluate.run.
"""
from pathlib import Path

from absl import logging

from sampot_jax import errors
from sampot_jax.data import fake_data
from sampot_jax.tasks import evaluate


def run(config, workdir) -> dict:
  """Generates the data if needed, then evaluates; returns the summary."""
  if not workdir:
    raise errors.ConfigError("--workdir is required for the smoke run (data and report go there).")
  workdir = Path(workdir)
  config = config.copy_and_resolve_references()
  config.unlock()
  data_dir = Path(config.data.dir or workdir / "data")
  if not (data_dir / "images").is_dir():
    fake_data.write(config.data.source, data_dir, n=config.num_fake_images)
    logging.info("Wrote %d fake images to %s", config.num_fake_images, data_dir)
  config.data.dir = str(data_dir)
  config.embedding_cache_dir = config.embedding_cache_dir or str(workdir / "embeddings")
  return evaluate.run(config, workdir)
