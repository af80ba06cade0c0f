"""Default config blocks shared by several tasks, as plain data.

configs/*.py build their ConfigDicts from these and import nothing else of the
package, so reading a config never loads JAX, TFDS or the data readers.
"""
import ml_collections

# What a reader does with an unreadable or inconsistent example.
ON_BAD_EXAMPLE = ("error", "skip")
# Candidate masks that imitate SAM's mistakes (candidates.py).
FAILURE_KINDS = ("shift", "scale", "rotate", "holes", "ragged", "leak_other_lung",
                 "leak_outside", "fragments")
# Safeguards that decide whether an evolved prompt replaces the user's (safeguards.py).
SAFEGUARD_RULES = ("score_gain", "mask_overlap", "click_inside")


def data() -> ml_collections.ConfigDict:
  """config.data: which images, at what size, which lung."""
  config = ml_collections.ConfigDict()
  config.source = "montgomery_team"  # one of sampot_jax.data.SOURCES
  config.dir = "../shared/data/montgomery"  # raw data (the TFDS manual dir)
  # Where TFDS writes the prepared data; None means ~/tensorflow_datasets.
  config.tfds_dir = ml_collections.config_dict.placeholder(str)
  # Square side in pixels; images: antialiased bilinear, masks: area fraction > 1/2.
  config.image_size = 256
  config.target = "left"  # 'left' (the paper's task) | 'right' | 'both'
  config.on_bad_example = "error"  # 'error' | 'skip' (logged, counted)
  return config


def candidates() -> ml_collections.ConfigDict:
  """config.candidates: candidate masks per image (the paper: ~16 level sets + 6 SAM clicks)."""
  config = ml_collections.ConfigDict()
  config.n_level_sets = 16
  config.level_set_dice_range = (0.2, 1.0)
  config.n_per_kind = 4
  config.kinds = FAILURE_KINDS
  return config


def safeguards() -> ml_collections.ConfigDict:
  """config.safeguards: every rule and its threshold (--config.safeguards.rules="('score_gain',)")."""
  config = ml_collections.ConfigDict()
  config.rules = SAFEGUARD_RULES
  config.min_score_gain = 0.0
  config.min_mask_dice = 0.5
  return config


def sam(variant: str = "vit_b", checkpoint_dir: str = "checkpoints/sam_vit_b") -> ml_collections.ConfigDict:
  """config.sam: which frozen model (sam.frozen.from_config)."""
  config = ml_collections.ConfigDict()
  config.checkpoint_dir = checkpoint_dir  # python -m ports.sam ... --out DIR
  config.variant = variant
  # Missing checkpoint_dir: False stops with the porting commands; True fetches the
  # source file (online) and ports it there (sampot_jax.sam.port.convert.fetch_and_port).
  config.fetch_if_missing = True
  config.random_init = False
  config.overrides = {}  # sam_config fields, random models only
  config.seed = 0
  return config
