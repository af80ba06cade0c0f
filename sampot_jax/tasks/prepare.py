"""The prepare task (configs/prepare_montgomery.py): the NLM's Montgomery zip -> WORKDIR in the
layout the evaluation and the regressor training read (data/prepare.py)."""
from sampot_jax import errors
from sampot_jax.data import prepare


def run(config, workdir):
  """main.py entry: prepare (or verify) WORKDIR from config.zip."""
  if not workdir:
    raise errors.ConfigError("--workdir is the folder to prepare, e.g. --workdir data/montgomery.")
  if not config.zip:
    raise errors.ConfigError("config.zip is empty. " + prepare.how_to_get())
  sha = prepare.ZIP_SHA256 if config.zip_sha256 is None else config.zip_sha256
  manifest = prepare.prepare_montgomery(config.zip, workdir, config.image_size, sha)
  print(f"{workdir}: {manifest['subjects']} subjects, {len(manifest['files'])} files "
        f"(sha256 in {prepare.MANIFEST}). Use it with --config.data.dir={workdir}")
