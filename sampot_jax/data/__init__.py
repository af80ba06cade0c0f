"""Chest X-ray lung data: TFDS builders (TF-free), a plain-folder reader, targets, splits.

Typical use:

  config = settings.block(settings.Data())    # from sampot_jax.runtime import settings
  config.dir = "../shared/data/montgomery"
  train = load_split(config, "train")       # LungSet, images (N, 256, 256) uint8
  masks = train.target(config.target)      # (N, 256, 256) bool
"""
from sampot_jax.data.lungs import LungSet
from sampot_jax.data.lungs import TARGETS
from sampot_jax.data.pipeline import load_split
from sampot_jax.data.sources import SOURCES
from sampot_jax.data.splits import SPLITS

__all__ = ["LungSet", "SOURCES", "SPLITS", "TARGETS",
           "load_split"]
