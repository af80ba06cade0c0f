"""Task 'smoke' (configs/smoke.py): the whole evaluation on generated data and random models.

Writes `config.num_fake_images` synthetic radiographs to WORKDIR/data/<source>-<n>images
(once per setting: a rerun with other settings never reuses another setting's data), keeps the
embedding cache in WORKDIR/embeddings, then runs evaluate.run.
"""
from pathlib import Path

from absl import logging

from sampot_jax import errors
from sampot_jax.data import fake_data
from sampot_jax.storage import files
from sampot_jax.tasks import evaluate


def prepare_data(config, workdir) -> Path:
  """config.data.dir when given, else the generated data of these settings (made once)."""
  if config.data.dir:
    return Path(config.data.dir)
  n = int(config.num_fake_images)
  data_dir = Path(workdir) / "data" / f"{config.data.source}-{n}images"
  done = data_dir / "generated.json"  # written last: a cut-short write is made again
  if not done.is_file():
    fake_data.write(config.data.source, data_dir, n=n)
    files.write_json(done, {"source": config.data.source, "num_fake_images": n})
    logging.info("Wrote %d fake images to %s", n, data_dir)
  return data_dir


def run(config, workdir) -> dict:
  """Generates the data if needed, then evaluates; returns the summary."""
  if not workdir:
    raise errors.ConfigError("--workdir is required for the smoke run (data and report go there).")
  workdir = Path(workdir)
  config = config.copy_and_resolve_references()
  config.unlock()
  config.data.dir = str(prepare_data(config, workdir))
  config.embedding_cache_dir = config.embedding_cache_dir or str(workdir / "embeddings")
  return evaluate.run(config, workdir)
