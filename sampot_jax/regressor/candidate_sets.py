"""Candidate masks with known Dice for a whole split, and their on-disk cache.

    cands = load_or_build_candidates(config, workdir, "train")   # CandidateSet

A split's set has two parts, built and cached apart: the synthetic candidates (level sets
and failure kinds, config.candidates; slow, minutes per split) and the frozen model's own
masks for rough boxes (config.candidates.model_boxes; seconds per image). Each cache file
name carries a hash of everything that shapes its part, so a changed setting never reuses a
stale part, and changing the model or its boxes does not rebuild the synthetic part.

`config.train_val_candidates` (optional) overrides config.candidates for the train and val
splits only: what the regressor learns from may differ from the test split's candidates,
which stay the benchmark.
"""
import dataclasses
import functools
import hashlib
import json
from pathlib import Path
import time

from absl import logging
import ml_collections
import numpy as np
from tqdm import tqdm

from sampot_jax import data
from sampot_jax import errors
from sampot_jax.regressor import candidates
from sampot_jax.storage import files

CANDIDATE_CACHE_VERSION = 5  # 3: skipped bad examples; 4: model-made masks + IoU; 5: two parts.
_PARTS = ("synthetic", "model")
_PER_CANDIDATE = ("masks", "image_index", "dice", "kinds", "model_iou")  # fields of (M,) rows


@dataclasses.dataclass(frozen=True)
class CandidateSet:
  """Candidate masks of one split, with their images and true Dice.

  Attributes:
    ids: (N,) str, subject ids.
    images: (N, S, S) uint8.
    targets: (N, S, S) bool, ground-truth target masks.
    others: (N, S, S) bool, the other lung (all False when the data has none).
    masks: (M, S, S) bool, candidate masks.
    image_index: (M,) int32, row of `images` each candidate belongs to.
    dice: (M,) float32, Dice of each candidate against its target.
    kinds: (M,) str, candidate kind (e.g. 'level_set', 'shift', 'model_box', ...).
    model_iou: (M,) float32, the model's own IoU prediction for model-made
      candidates ('model_box'), NaN for the others.
    skipped: (K, 2) str, the split's bad examples left out when it was read
      (on_bad_example='skip'): file, problem.
  """
  ids: np.ndarray
  images: np.ndarray
  targets: np.ndarray
  others: np.ndarray
  masks: np.ndarray
  image_index: np.ndarray
  dice: np.ndarray
  kinds: np.ndarray
  model_iou: np.ndarray
  skipped: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), str))

  def __len__(self) -> int:
    return int(self.dice.shape[0])

  def save(self, path: Path) -> None:
    def write(tmp):
      with open(tmp, "wb") as f:
        np.savez_compressed(
            f, version=np.int32(CANDIDATE_CACHE_VERSION),
            **{k: v for k, v in dataclasses.asdict(self).items()})
    files.atomic_write(path, write, ".npz")

  @classmethod
  def load(cls, path: Path) -> "CandidateSet":
    with np.load(path, allow_pickle=False) as z:
      if int(z["version"]) != CANDIDATE_CACHE_VERSION:
        raise errors.ConfigError(f"{path}: cache version {int(z['version'])}, expected "
                         f"{CANDIDATE_CACHE_VERSION}; delete the file.")
      return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})


def _rows(lungs, max_images: int, draw: int = 0) -> np.ndarray:
  """The subjects of a LungSet a run uses: the first `max_images` (all when 0) in id order, or
  with `draw` > 0 that many drawn at random with seed `draw` (kept in id order)."""
  total = len(lungs.ids)
  n = total if max_images <= 0 else min(max_images, total)
  if draw > 0 and n < total:
    return np.sort(np.random.default_rng([draw, total]).choice(total, n, replace=False))
  return np.arange(n)


def train_draw(config: ml_collections.ConfigDict, split: str) -> int:
  """config.train_images_draw where it applies (the train split of a few-label run), else 0."""
  if split != "train" or not config.train_images:
    return 0
  return int(config.get("train_images_draw", 0))


def images_of_split(config: ml_collections.ConfigDict, split: str) -> int:
  """How many of a split's subjects the run uses (0: all): config.train_images for train."""
  limits = [config.max_images_per_split]
  if split == "train" and config.train_images:
    limits.append(config.train_images)
  limits = [n for n in limits if n > 0]
  return min(limits) if limits else 0


def candidate_settings(config: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
  """config.candidates for `split`, with config.train_val_candidates over it for train/val."""
  settings = ml_collections.ConfigDict(config.candidates.to_dict())
  if split != "test" and config.train_val_candidates.to_dict():
    settings.update(config.train_val_candidates.to_dict())
  return settings


def build_candidate_set(lungs, config: ml_collections.ConfigDict, split: str,
                        part: str) -> CandidateSet:
  """One part (`_PARTS`) of the candidates for every subject of a LungSet.

  Each subject gets its own generators, seeded by (config.seed, split, index) for the
  synthetic part and (config.seed, split, index, 1) for the model's masks, so a subset of
  subjects gets the same candidates as the full split and either part can be rebuilt alone.
  """
  settings = candidate_settings(config, split)
  rows = _rows(lungs, images_of_split(config, split), train_draw(config, split))
  ids, images = [lungs.ids[r] for r in rows], lungs.images[rows]
  target_name = config.data.target
  targets = lungs.target(target_name)[rows]
  other = lungs.other_lung(target_name)
  other = None if other is None else other[rows]
  split_code = {"train": 0, "val": 1, "test": 2}[split]
  segment_boxes = _box_segmenter(config) if part == "model" else None
  masks, index, dice, kinds, ious = [], [], [], [], []
  what = f"{config.sam.variant}'s masks" if part == "model" else "synthetic masks"
  for i in tqdm(range(len(ids)), desc=f"candidates {split}: {what}", unit="image"):
    if part == "model":
      made = candidates.model_box_candidates(
          targets[i], functools.partial(segment_boxes, images[i]),
          np.random.default_rng([config.seed, split_code, i, 1]), int(settings.model_boxes),
          float(settings.model_box_max_jitter))
    else:
      made = candidates.make_candidates(
          images[i], targets[i], None if other is None else other[i],
          np.random.default_rng([config.seed, split_code, i]), settings)
    for c in made:
      masks.append(np.asarray(c.mask, bool))
      index.append(i)
      dice.append(c.dice)
      kinds.append(c.kind)
      ious.append(c.model_iou)
  if not masks:
    raise errors.ConfigError(f"split {split!r}: make_candidates gave no candidates; "
                     "check config.candidates.")
  return CandidateSet(
      ids=np.asarray(ids, dtype=str), images=np.asarray(images, np.uint8),
      targets=np.asarray(targets, bool),
      others=(np.zeros_like(targets, bool) if other is None
              else np.asarray(other, bool)),
      masks=np.stack(masks),
      image_index=np.asarray(index, np.int32),
      dice=np.asarray(dice, np.float32), kinds=np.asarray(kinds, dtype=str),
      model_iou=np.asarray(ious, np.float32),
      skipped=np.asarray(getattr(lungs, "skipped", ()), dtype=str).reshape(-1, 2))


def concat(parts: list[CandidateSet]) -> CandidateSet:
  """The candidates of several parts built on the same images, in order."""
  first = parts[0]
  for other in parts[1:]:
    if list(other.ids) != list(first.ids):
      raise errors.ConfigError("candidate parts were built on different images; delete the cache.")
  joined = {f: np.concatenate([getattr(p, f) for p in parts]) for f in _PER_CANDIDATE}
  return dataclasses.replace(first, **joined)


def select(cands: CandidateSet, rows: np.ndarray) -> CandidateSet:
  """The candidates at `rows` (indices or a boolean mask), on the same images."""
  return dataclasses.replace(cands, **{f: getattr(cands, f)[rows] for f in _PER_CANDIDATE})


def _parts(config: ml_collections.ConfigDict, split: str) -> tuple[str, ...]:
  return _PARTS if candidate_settings(config, split).model_boxes else _PARTS[:1]


def _box_segmenter(config):
  """image (S, S) uint8, boxes (n, 4) -> (masks (n, S, S), IoU (n,)): config.sam's model."""
  from sampot_jax.sam import frozen  # pylint: disable=g-import-not-at-top
  from sampot_jax.sam import predictor  # pylint: disable=g-import-not-at-top
  sam = frozen.from_config(config.sam)

  def segment(image, boxes):
    emb, frame = predictor.encode_images(sam.params, image[None], sam.config)
    masks, ious = predictor.prompt_masks(sam.params, sam.config, emb, frame, boxes[None])
    return np.asarray(masks[0]), np.asarray(ious[0])
  return segment


def cache_key(config: ml_collections.ConfigDict, split: str, part: str = "synthetic") -> str:
  """Hash of what shapes one part of a split's candidates."""
  settings = candidate_settings(config, split).to_dict()
  model_keys = ("model_boxes", "model_box_max_jitter")
  if part == "model":
    shaped = {k: settings.get(k) for k in model_keys}
  else:
    shaped = {k: v for k, v in settings.items() if k not in model_keys}
  # Data fields added later key only when set, so caches built before them stay valid.
  data_fields = {k: v for k, v in config.data.to_dict().items()
                 if not (k in ("label", "split_seed") and v == 0)}
  keyed = {"version": CANDIDATE_CACHE_VERSION, "split": split, "part": part,
           "seed": config.seed, "data": data_fields, "candidates": shaped,
           "sam": config.sam.to_dict() if part == "model" else None,
           "max_images_per_split": config.max_images_per_split}
  if split == "train" and config.train_images:
    keyed["train_images"] = config.train_images
  if train_draw(config, split):
    keyed["train_images_draw"] = train_draw(config, split)
  blob = json.dumps(files.json_ready(keyed), sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_or_build_candidates(config: ml_collections.ConfigDict, workdir: Path,
                             split: str) -> CandidateSet:
  """The split's CandidateSet; each part from the workdir cache, built on a miss."""
  cache_dir = Path(config.candidates_dir or Path(workdir) / "candidates")
  lungs, parts = None, []
  for part in _parts(config, split):
    path = cache_dir / f"{split}_{part}_{cache_key(config, split, part)}.npz"
    if path.exists():
      logging.info("Candidates for %s (%s) from cache %s", split, part, path)
      parts.append(CandidateSet.load(path))
      continue
    t0 = time.time()
    lungs = data.load_split(config.data, split) if lungs is None else lungs
    cands = build_candidate_set(lungs, config, split, part)
    cands.save(path)
    logging.info("Built %d %s candidates for %d %s images in %.0f s -> %s",
                 len(cands), part, len(cands.ids), split, time.time() - t0, path)
    parts.append(cands)
  return concat(parts)


def atlas_of(train_set: CandidateSet) -> np.ndarray:
  """Mean training target mask, (S, S) float32 in [0, 1]."""
  return train_set.targets.mean(axis=0, dtype=np.float32)


def batch(cands: CandidateSet, idx: np.ndarray):
  """Images, masks (B, S, S) float32 in [0, 1] and Dice (B,) for indices."""
  images = cands.images[cands.image_index[idx]].astype(np.float32) / 255.0
  masks = cands.masks[idx].astype(np.float32)
  return images, masks, cands.dice[idx]
