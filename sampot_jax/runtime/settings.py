"""Every shared config block's fields and defaults, once: one frozen dataclass per block.

    config.evolve = settings.block(settings.Evolve(num_steps=30))   # configs/*.py
    evolve_settings = settings.typed(settings.Evolve, config.evolve, "config.evolve")  # a task

configs/*.py build their ConfigDicts from these (plain data: this module loads no JAX, TFDS or
data readers); a task turns the blocks back into these dataclasses when it starts
(`check_blocks`), so an unknown field or a bad value stops the run before any work, with the
field named. Code reads the fields; nothing falls back to a default of its own.
"""
import dataclasses
from typing import Any, TypeVar

import ml_collections

from sampot_jax import errors

T = TypeVar("T")

# What a reader does with an unreadable or inconsistent example.
ON_BAD_EXAMPLE = ("error", "skip")
# Candidate masks that imitate SAM's mistakes (regressor/candidates.py).
FAILURE_KINDS = ("shift", "scale", "rotate", "holes", "ragged", "leak_other_lung",
                 "leak_outside", "fragments")
# Safeguards that decide whether an evolved prompt replaces the user's (sampot/safeguards.py).
SAFEGUARD_RULES = ("score_gain", "mask_overlap", "click_inside", "iou_agrees")


def _check(name: str, checks) -> None:
  for field, ok, need, value in checks:
    if not ok:
      raise errors.ConfigError(f"config.{name}.{field}={value!r}; it must be {need}.")


@dataclasses.dataclass(frozen=True)
class Data:
  """config.data: which images, at what size, which structure.

  Attributes:
    source: the layout (sampot_jax.data.SOURCES).
    dir: the raw data folder (the TFDS manual dir).
    tfds_dir: where TFDS writes the prepared data; None: ~/tensorflow_datasets.
    image_size: square side in pixels; images: antialiased bilinear, masks: area > 1/2.
    target: 'left' (the paper's task), 'right' or 'both' lungs; with source 'folder', any
      structure, read from masks/<target>/ (e.g. 'heart').
    on_bad_example: 'error' stops at the first bad example; 'skip' logs and counts it.
    label: 0: masks are binary; N > 0: a plain folder's masks are label maps and the
      structure is the pixels equal to N.
    split_seed: seeds the split of a set without splits.csv (splits.deterministic_split).
  """
  source: str = "montgomery_team"
  dir: str = "../shared/data/montgomery"
  tfds_dir: str | None = None
  image_size: int = 256
  target: str = "left"
  on_bad_example: str = "error"
  label: int = 0
  split_seed: int = 0

  def __post_init__(self):
    _check("data", (("on_bad_example", self.on_bad_example in ON_BAD_EXAMPLE,
                     f"one of {ON_BAD_EXAMPLE}", self.on_bad_example),
                    ("image_size", self.image_size >= 16, ">= 16 (e.g. 256)", self.image_size),
                    ("label", self.label >= 0, ">= 0 (0: binary masks)", self.label)))


@dataclasses.dataclass(frozen=True)
class Candidates:
  """config.candidates: masks with known Dice per image (the paper: ~16 level sets + 6 SAM
  clicks); the model's own masks of `model_boxes` rough boxes (jitter up to
  `model_box_max_jitter` of the box's size) when > 0."""
  n_level_sets: int = 16
  level_set_dice_range: tuple[float, float] = (0.2, 1.0)
  n_per_kind: int = 4
  kinds: tuple[str, ...] = FAILURE_KINDS
  model_boxes: int = 0
  model_box_max_jitter: float = 0.4

  def __post_init__(self):
    unknown = sorted(set(self.kinds) - set(FAILURE_KINDS))
    _check("candidates", (("kinds", not unknown, f"a subset of {FAILURE_KINDS}", self.kinds),
                          ("model_boxes", self.model_boxes >= 0, ">= 0", self.model_boxes)))


@dataclasses.dataclass(frozen=True)
class Safeguards:
  """config.safeguards: the rules in force (sampot/safeguards.py) and their thresholds;
  --config.safeguards.rules="('score_gain',)" keeps one. The default is the first three rules:
  iou_agrees (the model's IoU head must not contradict the regressor) is asked for by name."""
  rules: tuple[str, ...] = SAFEGUARD_RULES[:3]
  min_score_gain: float = 0.0
  min_mask_dice: float = 0.5
  max_iou_drop: float = 0.0

  def __post_init__(self):
    rules = (self.rules,) if isinstance(self.rules, str) else tuple(self.rules)
    bad = sorted(set(rules) - set(SAFEGUARD_RULES))
    if bad:
      raise errors.ConfigError(
          f"config.safeguards.rules names {bad}; choose from {SAFEGUARD_RULES} (an empty "
          "tuple keeps every evolved prompt).")
    object.__setattr__(self, "rules", rules)


@dataclasses.dataclass(frozen=True)
class Sam:
  """config.sam: which frozen model (sam.frozen.from_config).

  Attributes:
    checkpoint_dir: a ported checkpoint (python -m ports.sam ... --out DIR).
    variant: vit_b, vit_l, vit_h, lite_medsam or mobile_sam.
    fetch_if_missing: a missing checkpoint_dir is fetched (online) and ported there; False
      stops with the porting commands.
    random_init: random weights (smoke runs, tests) with `overrides` (sam_config fields).
    seed: of the random weights.
  """
  checkpoint_dir: str = "checkpoints/sam_vit_b"
  variant: str = "vit_b"
  fetch_if_missing: bool = True
  random_init: bool = False
  overrides: dict = dataclasses.field(default_factory=dict)
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Regressor:
  """config.regressor: the trained regressor a run uses (regressor.store.from_config).

  Attributes:
    name: a regressor shipped inside the package (regressor/shipped.py: `python -m
      sampot_jax.regressor.shipped` lists them), e.g. 'lite_medsam_lung_left'.
    workdir: a train_regressor workdir, e.g. from
      python main.py --config configs/train_regressor_coord.py --workdir runs/regressor;
      when set, it is used instead of `name`.
    random_init: a random regressor (smoke runs, tests) with `model` (model fields).
    seed: of the random weights.
  """
  name: str = ""
  workdir: str = ""
  random_init: bool = False
  model: dict = dataclasses.field(default_factory=dict)
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Evolve:
  """config.evolve: SAMPOT's hyper-parameters (hashable: a static argument of the jitted loop).

  Attributes:
    num_steps: Adam updates; trajectories hold num_steps + 1 prompts (not in the paper).
    learning_rate: Adam step size in original-image pixels (paper: 10).
    weight_decay: AdamW decay (paper: 0, i.e. plain Adam).
    slope: steepness of sigmoid(slope * logits) that makes the mask near-binary (paper: "a
      steeper slope", value not given).
    num_starts: starting points per image: the given prompt + num_starts - 1 restarts
      jittered around it (paper: the user's prompt only).
    restart_jitter: std of the restarts' offsets, pixels.
    seed: PRNG seed of the restarts.
    num_snapshots: masks kept along the best start's trajectory (Fig. 5): evenly spaced
      steps, the best step among them.
    objective: "score" (the regressor's, SAMPOT) or "iou" (SAM's own IoU prediction, a
      baseline without a regressor).
    iou_weight: w in [0, 1]; the score is (1 - w) * regressor + w * SAM's IoU prediction
      (sampot.scorer.blend). 0: the paper's regressor alone. The two err apart on a trained
      model's masks, so a blend ranks them better (docs/sampot.md; w is chosen on val).
    ascend_blend: Adam ascends the blended score (True) or the regressor's alone, the best
      prompt still being chosen by the blend (False): the IoU head misleads the ascent from
      far-off prompts (docs/sampot.md).
    min_box_size: smallest box side, pixels, a step may leave.
    population: prompts scored before the ascent: the given prompt and population - 1 around
      it, each coordinate moved uniformly by up to population_jitter x the box's width/height
      (a click alone: x the image's); Adam starts from the best of them by the score.
      0 or 1: none (the paper's SAMPOT). A population finds the right neighbourhood far faster
      than Adam's few-pixel steps, Adam then polishes (docs/compare.md: the hybrid).
    population_jitter: see population.
  """
  num_steps: int = 40
  learning_rate: float = 10.0
  weight_decay: float = 0.0
  slope: float = 5.0
  num_starts: int = 1
  restart_jitter: float = 10.0
  seed: int = 0
  num_snapshots: int = 4
  objective: str = "score"
  iou_weight: float = 0.0
  ascend_blend: bool = True
  min_box_size: float = 2.0
  population: int = 0
  population_jitter: float = 0.1

  def __post_init__(self):
    _check("evolve", (
        ("population", self.population >= 0, ">= 0", self.population),
        ("population_jitter", self.population_jitter > 0, "> 0", self.population_jitter),
        ("objective", self.objective in ("score", "iou"), "'score' or 'iou'", self.objective),
        ("num_steps", self.num_steps >= 0, ">= 0", self.num_steps),
        ("learning_rate", self.learning_rate > 0, "> 0", self.learning_rate),
        ("weight_decay", self.weight_decay >= 0, ">= 0", self.weight_decay),
        ("slope", self.slope > 0, "> 0", self.slope),
        ("num_starts", self.num_starts >= 1, ">= 1", self.num_starts),
        ("restart_jitter", self.restart_jitter >= 0, ">= 0", self.restart_jitter),
        ("num_snapshots", self.num_snapshots >= 1, ">= 1", self.num_snapshots),
        ("iou_weight", 0 <= self.iou_weight <= 1, "in [0, 1]", self.iou_weight),
        ("min_box_size", self.min_box_size > 0, "> 0", self.min_box_size)))


@dataclasses.dataclass(frozen=True)
class Baselines:
  """config.baselines: what the evaluate task compares SAMPOT with (sampot/baselines.py).

  Attributes:
    grid_size: n x n grid of clicks for the grid search and the true-Dice grid; 0 = off.
    grid_chunk: grid prompts decoded together per image (bounds memory).
    box_methods: box prompts: SAM's IoU as the objective, the true-Dice bound, a random search
      over num_steps + 1 boxes, the ground-truth box.
    search_jitter: the random search's boxes: each coordinate moved by up to this x size.
  """
  grid_size: int = 0
  grid_chunk: int = 16
  box_methods: bool = False
  search_jitter: float = 0.1


@dataclasses.dataclass(frozen=True)
class Verdict:
  """config.verdict: should SAMPOT use a regressor? (regressor/verdict.py)

  Attributes:
    images: the first this many test images (id order) are refined; 0: none (no verdict).
    box_jitter, box_seed: their rough boxes, drawn as the evaluate task draws them.
    image_size: the test images' square side for SAMPOT (config.evolve's steps are in its
      pixels): 512, the evaluate configs' and the shipped regressors' tables'; the regressor
      sees its own resolution either way.
    batch_size: images refined together.
    iou_ascent: also run the ascent on the model's IoU head (the alternative without a
      regressor; doubles the time).
  """
  images: int = 40
  box_jitter: float = 0.15
  box_seed: int = 0
  image_size: int = 512
  batch_size: int = 8
  iou_ascent: bool = True

  def __post_init__(self):
    _check("verdict", (("images", self.images >= 0, ">= 0 (0: no verdict)", self.images),
                       ("box_jitter", 0 <= self.box_jitter <= 1, "in [0, 1]", self.box_jitter),
                       ("image_size", self.image_size >= 16, ">= 16 (e.g. 512)",
                        self.image_size),
                       ("batch_size", self.batch_size >= 1, ">= 1", self.batch_size)))


@dataclasses.dataclass(frozen=True)
class Rank:
  """config.rank: a within-image ranking loss beside the regression loss (regressor/train.py).

  SAMPOT keeps the best-scoring prompt of one image, so the order of one image's masks is what
  counts. With weight > 0 every batch holds batch_size / group images, `group` candidates of
  each, and the loss adds weight x the mean of softplus(-temperature (s_i - s_j)) over the pairs
  of one image whose true Dice differ by more than min_gap (i the better).

  Attributes:
    weight: 0: the regression loss alone (the shipped regressors); e.g. 1.
    group: candidates of one image in a batch (batch_size must be a multiple of it).
    temperature: sharpness of the pairwise logistic, per unit of score.
    min_gap: pairs closer than this in true Dice are not ranked.
  """
  weight: float = 0.0
  group: int = 8
  temperature: float = 20.0
  min_gap: float = 0.02

  def __post_init__(self):
    _check("rank", (("weight", self.weight >= 0, ">= 0 (0: no ranking loss)", self.weight),
                    ("group", self.group >= 2, ">= 2 (pairs of one image)", self.group),
                    ("temperature", self.temperature > 0, "> 0", self.temperature),
                    ("min_gap", self.min_gap >= 0, ">= 0", self.min_gap)))


# config field -> its dataclass, for the blocks tasks share.
@dataclasses.dataclass(frozen=True)
class Distributed:
  """config.distributed: one run over several processes (runtime/distributed.py), each on its
  share of the images, one set of outputs.

  Attributes:
    num_processes: processes of the run; 1: this process alone.
    process_id: this process's number, 0 .. num_processes - 1 (0 merges the outputs).
    coordinator: host:port of process 0, where the others connect (e.g. 'node0:12345').
    auto: jax.distributed.initialize() finds the cluster itself (TPU pods, SLURM, Open MPI);
      the three fields above are then unused.
  """
  num_processes: int = 1
  process_id: int = 0
  coordinator: str = ""
  auto: bool = False

  def __post_init__(self):
    _check("distributed", (
        ("num_processes", self.num_processes >= 1, ">= 1", self.num_processes),
        ("process_id", 0 <= self.process_id < self.num_processes,
         f"in 0 .. {self.num_processes - 1}", self.process_id),
        ("coordinator", bool(self.coordinator) or self.num_processes == 1 or self.auto,
         "host:port of process 0 when num_processes > 1", self.coordinator)))


BLOCKS = {"data": Data, "candidates": Candidates, "safeguards": Safeguards, "sam": Sam,
          "regressor": Regressor, "evolve": Evolve, "baselines": Baselines,
          "distributed": Distributed, "verdict": Verdict, "rank": Rank}


def block(settings: Any) -> ml_collections.ConfigDict:
  """A dataclass's fields as a ConfigDict (a configs/*.py block; None fields stay typed)."""
  config = ml_collections.ConfigDict()
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    if value is None:  # a placeholder keeps --config.x.y=... overrides typed
      value = ml_collections.config_dict.placeholder(str)
    elif isinstance(value, dict):
      value = dict(value)
    setattr(config, field.name, value)
  return config


def typed(cls: type[T], config_block, name: str) -> T:
  """`cls` (a dataclass) from a ConfigDict or dict; unknown fields are errors naming `name`.

  Missing fields take the dataclass defaults; lists become tuples (so the result stays
  hashable, e.g. a static argument of jit).
  """
  if isinstance(config_block, cls):  # already typed
    return config_block
  fields = {f.name for f in dataclasses.fields(cls) if f.init}
  if "parent" in fields:  # a Flax module: its own `parent` and `name` are not config fields
    fields -= {"parent", "name"}
  if isinstance(config_block, ml_collections.ConfigDict):
    given = config_block.to_dict()
  else:
    given = dict(config_block or {})
  unknown = sorted(set(given) - fields)
  if unknown:
    raise errors.ConfigError(f"{name} has unknown field(s) {unknown}; known: {sorted(fields)}.")
  given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
  try:
    return cls(**given)
  except TypeError as e:
    raise errors.ConfigError(f"{name}: {e}") from None


def check_blocks(config) -> dict:
  """Every shared block of a task's config as its dataclass ({name: settings}); a bad field
  stops the task here, named, before any work."""
  return {name: typed(cls, config[name], f"config.{name}")
          for name, cls in BLOCKS.items() if name in config}
