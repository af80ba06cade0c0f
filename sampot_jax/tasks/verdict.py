"""Should SAMPOT use a regressor on this data? (task 'verdict')

    python main.py --config configs/verdict.py --workdir W --config.data.dir=MYDATA \
        [--config.regressor.name=NAME | --config.regressor.workdir=DIR]

For a regressor already made (a shipped one, or a train_regressor workdir) on a labelled folder
it was not trained on: the config.sam model's masks of rough boxes on the first
config.verdict.images test images (cached in W/candidates), then regressor.verdict on them:
W/verdict.md and verdict.json. configs/train_regressor.py gives the same verdict at the end of
training.
"""
from pathlib import Path

import ml_collections

from sampot_jax import errors
from sampot_jax.regressor import candidate_sets
from sampot_jax.regressor import verdict
from sampot_jax.storage import files
from sampot_jax.tasks import common


def run(config, workdir) -> dict:
  """Task 'verdict': W/verdict.json and verdict.md; returns the verdict."""
  workdir = common.start(config, workdir)
  if not config.verdict.images:
    raise errors.ConfigError("config.verdict.images=0 asks for no verdict; give the number of "
                             "test images to refine (e.g. --config.verdict.images=40).")
  files.write_json(workdir / "config.json", config.to_dict())
  scorer = common.load_scorer(config, check_target=True)
  # The score table's masks (the model's masks of 12 rough boxes each, and the synthetic ones):
  # on the same test images that SAMPOT refines.
  config = ml_collections.ConfigDict(config.to_dict())
  config.max_images_per_split = config.verdict.images
  test = candidate_sets.load_or_build_candidates(config, workdir, "test")
  block = config.regressor
  where = (f"--config.regressor.workdir={Path(block.workdir).expanduser()}" if block.workdir
           else f"--config.regressor.name={block.name}")
  return verdict.run(config, workdir, scorer, test, where=where)
