"""SAMPOT on a user's own, unlabelled images (task 'refine'; tasks/score.py scores existing
masks).

    python main.py --config configs/refine.py --config.images=PATH \
        --config.prompts=prompts.csv --workdir OUT

refine, per batch of config.batch_size images of any sizes (one compiled program for every
batch: the last one is padded; only the final masks' upsampling is compiled per image size):

  read (data/images.py) -> SAM encoder (the model's input, the same size for every image) ->
  evolve_prompts in the model's input frame (the user's prompt moved by gradient ascent on the
  regressor's score; step sizes scale with each image, Batch.step_scales) -> masks of both
  prompts at each image's original size ->
  safeguards (keep the evolved prompt or fall back to the user's) ->
  OUT/masks/<name>.png (the kept prompt's mask, 0/255), OUT/overlays/<name>.png, a row of
  OUT/results.csv; OUT/summary.json at the end. With config.save_initial_masks also
  OUT/initial_masks/<name>.png, the mask of the user's own prompt.

<name> is the image's path relative to config.images without its suffix. Outputs are written
to temporary names and renamed; an image whose mask, overlay and results row (for the same
prompt) exist is skipped on a rerun unless config.overwrite.

What the regressor sees: the image in grey in [0, 1], zero padded at the bottom and right to a
max(H, W) square and resized to the regressor's resolution S (data/images.to_square), so the
aspect ratio is kept. SAM pads the same way, so its low-res logits over the whole padded model
frame are that square: `model_frame` gives evolve_prompts a frame whose valid region is the
whole model frame (prompts in the model's pixels, each kept inside its image by
Batch.uppers), and evolve's soft mask is then SAM's mask of the padded square, aligned with the
image. The final masks are the low-res logits of the two prompts taken to each image's size
(evolve_prompts' own masks, in the model frame, are not used).

Bad inputs (config.on_bad_example): an image without a prompt row, a row without an image, a
row that does not parse or repeats an image, a prompt outside its image, an unreadable or
corrupt file. 'error' stops with every problem found, each naming the file and the CSV line;
'skip' logs and skips them and lists them in summary.json. Problems visible from the CSV and
the file headers are found before any model is loaded.
"""
import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
import shutil
import time
import zlib

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from sampot_jax import errors
from sampot_jax.data import images as images_lib
from sampot_jax.data import prompt_csv
from sampot_jax.data import volumes
from sampot_jax.report import overlay
from sampot_jax.regressor import shipped
from sampot_jax.sam import model
from sampot_jax.sam import predictor
from sampot_jax.sam import processing
from sampot_jax.sampot import evolve
from sampot_jax.sampot import metrics
from sampot_jax.runtime import distributed
from sampot_jax.sampot import safeguards
from sampot_jax.storage import checkpoints
from sampot_jax.storage import embedding_cache
from sampot_jax.storage import files
from sampot_jax.tasks import common


# ---------------------------------------------------------------------------------------------
# refine: planning (no models).
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Item:
  """One image (or one slice of a volume) to refine."""
  name: str        # relative to config.images, as in the CSV
  path: Path
  line: int        # its row in the prompts CSV
  prompt: np.ndarray  # (D,) float64 original pixels
  out: str         # output name: masks/<out>.png, overlays/<out>.png
  sha256: str = ""  # of the image file's bytes (file_sha256)
  slice: int | None = None  # a volume's slice (data/volumes.py); None: a 2-D image

  @property
  def key(self) -> str:
    """What identifies its results row: the file, and the slice of a volume."""
    return row_key(self.name, self.slice)


def row_key(name: str, z) -> str:
  return name if z in (None, "") else f"{name}#{int(z)}"


def out_name(key: str) -> str:
  """A results key -> its outputs' name: 'a.png' -> 'a', 'ct.nii.gz#7' -> 'ct/slice_0007'."""
  name, _, z = key.partition("#")
  return f"{volume_out(name)}/slice_{int(z):04d}" if z else common.output_name(name)


def volume_out(name: str) -> str:
  """'sub/ct.nii.gz' -> 'sub/ct': a volume's outputs' name (masks/<it>.nii.gz)."""
  for suffix in images_lib.VOLUME_SUFFIXES[::-1]:
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return common.output_name(name)


def plan(config, workdir: Path) -> tuple[int, list[Item], list[errors.BadInputError], int]:
  """The images and prompts of a run, checked against each other and against the image headers.

  Returns (D, items, problems, number of images found); nothing is decoded but headers.
  """
  found = images_lib.list_images(config.images, exclude=[workdir], volumes=True)
  dim, rows, bad_rows = prompt_csv.read_prompts(config.prompts)
  pairs, problems = prompt_csv.match(found, rows, bad_rows)
  by_out: dict[str, set[str]] = {}
  for name, _ in pairs:
    by_out.setdefault(volume_out(name), set()).add(name)
  items, shapes, hashes = [], {}, {}
  for name, row in pairs:
    out = volume_out(name)
    if len(by_out[out]) > 1:
      others = sorted(n for n in by_out[out] if n != name)
      problems.append(errors.BadInputError(name, line=row.line, reason=f"its outputs masks/{out}.png would overwrite "
                                    f"those of {others}; rename one of the files"))
      continue
    try:
      if volumes.is_volume(found[name]):
        if name not in shapes:
          shapes[name] = volumes.read_shape(found[name])
        x, y, z = shapes[name]
        if row.slice is None:
          raise errors.BadInputError(name, "is a volume: give its slices' prompts "
                                     "(file,slice,x0,y0,x1,y1) or a 3-D box "
                                     "(file,x0,y0,z0,x1,y1,z1)")
        if row.slice >= z:
          raise errors.BadInputError(name, f"has {z} slices (0 to {z - 1}); slice {row.slice} "
                                     "is not one of them")
        size = (y, x)
      elif row.slice is not None:
        raise errors.BadInputError(name, f"is not a volume; slice {row.slice} names nothing "
                                   "(a 2-D image takes file,x0,y0,x1,y1)")
      else:
        size = images_lib.read_size(found[name])
    except errors.BadInputError as e:
      problems.append(errors.BadInputError(name, line=row.line, reason=e.reason))
      continue
    try:
      predictor.check_prompts(row.prompt[None], size, ids=[name])
    except ValueError as e:
      problems.append(errors.BadInputError(name, line=row.line, reason=str(e)))
      continue
    if name not in hashes:
      hashes[name] = file_sha256(found[name])
    items.append(Item(name, found[name], row.line, row.prompt,
                      out_name(row_key(name, row.slice)), hashes[name], row.slice))
  return dim, items, common.sort_problems(problems), len(found)


def _same_prompt(row: dict, prompt: np.ndarray, dim: int) -> bool:
  try:
    old = np.array([float(row[f"initial_{f}"]) for f in predictor.PROMPT_FIELDS[dim]])
  except (KeyError, ValueError, TypeError):
    return False
  return bool(np.allclose(old, prompt, atol=1e-3, rtol=0))


def file_sha256(path: Path) -> str:
  """sha256 (hex) of a file's bytes: an image replaced under the same name is another image."""
  return checkpoints.sha256_file(path)


def _model_identity(block, files_that_say: tuple[str, ...]) -> dict:
  """What identifies a model without loading it: its config block, and the bytes of the files
  that vouch for its weights (a port's manifest, a regressor's crc32 index) where they exist."""
  identity = {"block": block.to_dict()}
  folder = block.get("checkpoint_dir") or block.get("workdir")
  if not folder and block.get("name") and not block.random_init:
    folder, files_that_say = shipped.WEIGHTS_DIR, (f"{block.name}.json",)
  if folder and not block.random_init:
    for name in files_that_say:
      path = Path(folder).expanduser() / name
      if path.is_file():
        identity[name] = hashlib.sha256(path.read_bytes()).hexdigest()
  return identity


def run_key(config) -> str:
  """sha256 (16 hex) of what shapes a refined mask besides the image and its prompt: the SAM and
  regressor (identified by config and weight files), evolve, safeguards, reference_side, seed."""
  keyed = {"sam": _model_identity(config.sam, ("manifest.json",)),
           "regressor": _model_identity(config.regressor, ("regressor_index.json",
                                                           "oracle_index.json")),
           "evolve": config.evolve.to_dict(), "safeguards": config.safeguards.to_dict(),
           "reference_side": config.reference_side, "seed": config.seed}
  return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def why_due(workdir: Path, item: Item, previous: dict, dim: int, key: str) -> str | None:
  """None when the image is done (its mask, overlay and a results row for the same image bytes,
  prompt, models and settings exist), else why it is due."""
  row = previous.get(item.key)
  if row is None:
    return "new"
  if row.get("kind") != predictor.PROMPT_KINDS[dim] or not _same_prompt(row, item.prompt, dim):
    return "its prompt changed"
  if row.get("image_sha256") != item.sha256:
    return "the image file changed"
  if row.get("run_key") != key:
    return "the models or settings changed"
  if not ((workdir / "masks" / f"{item.out}.png").is_file()
          and (workdir / "overlays" / f"{item.out}.png").is_file()):
    return "an output is missing"
  return None


def move_stale(workdir: Path, names: list[str]) -> None:
  """Outputs of images (results keys: row_key) no longer in this run (removed, or their prompt
  now refused) move to WORKDIR/stale/ (kept, not deleted; a later run of the same image
  overwrites them there)."""
  for name in names:
    out = out_name(name)
    for folder in ("masks", "overlays", "initial_masks"):
      source = workdir / folder / f"{out}.png"
      if source.is_file():
        target = workdir / "stale" / folder / f"{out}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
  logging.warning("%d image(s) of the previous run are not in this one (removed, or their "
                  "prompt is now refused): their rows left results.csv and their outputs moved "
                  "to %s: %s", len(names), workdir / "stale", ", ".join(names[:10]))


# ---------------------------------------------------------------------------------------------
# refine: one image.
# ---------------------------------------------------------------------------------------------

def step_scale(size: tuple[int, int], img_size: int, reference_side: float) -> float:
  """An image's Adam step, restart jitter and smallest box side in the model's input pixels, as
  a multiple of the settings' (given for a `reference_side` image, scaled to each image's
  longest side; 0: pixels of every image as given)."""
  if reference_side and reference_side > 0:
    return img_size / float(reference_side)
  return img_size / float(max(size))


@functools.partial(jax.jit, static_argnames=("sam_config", "decode_fn"))
def _model_frame_logits(sam_params, embeddings, prompts, *, sam_config, decode_fn):
  """(B, g, g, C), (B, K, D) prompts in model pixels -> low-res logits (B, K, L, L), IoU (B, K)."""
  b, k, d = prompts.shape
  frame = model_frame(sam_config.img_size)
  low_res, iou = decode_fn(sam_params, jnp.repeat(embeddings, k, axis=0),
                           prompts.reshape(b * k, d), frame, sam_config)
  return (low_res[:, 0].reshape((b, k) + low_res.shape[-2:]), iou[:, 0].reshape(b, k))


def model_frame(img_size: int) -> predictor.ImageFrame:
  """The model's own input frame, shared by images of every size: prompts in its pixels, the
  whole padded square valid (the regressor sees the image padded to that square)."""
  return predictor.ImageFrame((int(img_size), int(img_size)), (int(img_size), int(img_size)))


class Refiner:
  """The frozen models of a run; refines a batch of images of any sizes in one compiled call."""

  def __init__(self, config, workdir: Path, batch_size: int | None = None):
    t0 = time.time()
    self.sam = common.load_sam(config)
    self.scorer = common.load_scorer(config)
    self.side = self.scorer.resolution
    self.img_size = int(self.sam.config.img_size)
    self.proc = processing.processing_for(self.sam.config)
    self.settings = evolve.settings_from_config(config.evolve)
    self.reference_side = float(config.reference_side)
    self.batch_size = int(config.batch_size if batch_size is None else batch_size)
    if self.batch_size < 1:
      raise errors.ConfigError(f"config.batch_size={self.batch_size}; it must be >= 1.")
    self.safeguards = config.safeguards
    self.key = jax.random.key(int(config.seed))
    self.cache = (embedding_cache.EmbeddingCache(config.embedding_cache_dir, self.sam.key,
                                                 self.sam.config)
                  if config.embedding_cache_dir else None)
    self.compiled: set = set()  # image sizes whose final masks were compiled
    self.evolve_programs_before = evolve.compiled_programs()
    self.seconds_loading = time.time() - t0
    logging.info("Models loaded in %.1f s: SAM %s (%s), regressor at %d x %d; %d image(s) per "
                 "compiled call.", self.seconds_loading, self.sam.config.variant, self.sam.key,
                 self.side, self.side, self.batch_size)

  @property
  def evolve_compilations(self) -> int:
    """How often this run compiled the evolution (every image size shares one program)."""
    return evolve.compiled_programs() - self.evolve_programs_before

  def _pad(self, rows: list, stack=np.stack):
    """n rows -> batch_size rows (the last repeated), stacked: every call has one shape."""
    return stack(rows + [rows[-1]] * (self.batch_size - len(rows)))

  def encode(self, inputs: np.ndarray) -> jax.Array:
    """(n, S, S, 3) model inputs -> (batch_size, g, g, C) embeddings (padded)."""
    encode = lambda batch: model.encode_jit(self.sam.params, jnp.asarray(batch), self.sam.config)
    if self.cache is not None:
      embeddings, _ = self.cache.embeddings(list(inputs), encode, self.batch_size)
      return jnp.asarray(self._pad(list(embeddings)))
    return encode(self._pad(list(inputs)))

  def refine_batch(self, items: list, images: list) -> list[dict]:
    """Evolves the prompts of up to batch_size images (any sizes) in the model's input frame;
    returns one dict of host arrays per image, masks at each image's own size."""
    n, s = len(items), self.img_size
    t0 = time.time()
    inputs = np.concatenate([self.proc.prepare_images(im.pixels[None], s)[0] for im in images])
    embeddings = jax.block_until_ready(self.encode(inputs))
    t_encode = time.time() - t0
    t0 = time.time()
    prompts, uppers, scales, keys = [], [], [], []
    for item, image in zip(items, images):
      pairs = np.asarray(item.prompt, np.float64).reshape(-1, 2)
      prompts.append(self.proc.apply_coords(pairs, image.size, s).reshape(-1))
      uppers.append(self.proc.apply_coords(np.array([predictor.click_upper(image.size)]),
                                           image.size, s)[0])
      scales.append(step_scale(image.size, s, self.reference_side))
      keys.append(jax.random.fold_in(self.key, zlib.crc32(item.key.encode()) & 0x7FFFFFFF))
    small = [images_lib.to_square(im.gray, self.side) for im in images]
    batch = evolve.Batch(embeddings, model_frame(s), jnp.asarray(self._pad(small)),
                         self._pad(prompts).astype(np.float32), self._pad(uppers),
                         self._pad(scales))
    # masks=False: the two prompts are decoded once, below, as logits for each image's size.
    result = evolve.evolve_prompts(self.sam, self.scorer, batch, self.settings,
                                   rng=self._pad(keys, jnp.stack), masks=False)
    both = jnp.stack([result.initial_prompt, result.best_prompt], axis=1)
    low_res, ious = _model_frame_logits(self.sam.params, embeddings, both,
                                        sam_config=ml_collections.FrozenConfigDict(
                                            self.sam.config), decode_fn=self.sam.decode)
    low_res, ious = np.asarray(low_res), np.asarray(ious)
    both = np.asarray(both, np.float64)
    t_evolve = time.time() - t0
    outs = []
    for i, image in enumerate(images):
      frame = predictor.frame_for(image.size, s)
      self.compiled.add(image.size)
      masks = np.asarray(_to_original(jnp.asarray(low_res[i]), self.proc, frame, s))
      # Back to the image's pixels: the inverse of apply_coords (a scale per axis).
      unit = self.proc.apply_coords(np.ones((1, 2)), image.size, s)[0].astype(np.float64)
      best = (both[i, 1].reshape(-1, 2) / unit).reshape(-1)
      outs.append(dict(
          initial=np.asarray(items[i].prompt, np.float64), best=best,
          initial_score=float(result.initial_score[i]), best_score=float(result.best_score[i]),
          initial_mask=masks[0], best_mask=masks[1], initial_iou=float(ious[i, 0]),
          best_iou=float(ious[i, 1]), best_step=int(result.best_step[i]),
          nan_step=int(np.asarray(result.nan_step)[i].min()),
          seconds={"encode": t_encode / n, "evolve": t_evolve / n}))
    return outs


@functools.partial(jax.jit, static_argnames=("proc", "frame", "img_size"))
def _to_original(low_res, proc, frame: predictor.ImageFrame, img_size: int):
  """(K, L, L) low-res logits -> (K, H, W) bool masks at the image's size (one small program
  per size: the evolution never sees the size)."""
  logits = proc.postprocess_masks(low_res, frame.input_size, frame.original_size, img_size)
  return logits > predictor.MASK_THRESHOLD


def _prompt_text(prompt) -> str:
  return "(" + ", ".join(f"{v:.1f}" for v in np.asarray(prompt)) + ")"


def judge(config, out: dict) -> dict:
  """The safeguards' verdict on one image: accepted, the rules that rejected, the kept prompt."""
  passed = safeguards.check(config.safeguards, np.array([out["initial_score"]]),
                            np.array([out["best_score"]]), out["initial_mask"][None],
                            out["best_mask"][None], out["best"][None])
  passed = {rule: bool(ok[0]) for rule, ok in passed.items()}
  accepted = all(passed.values())
  return dict(passed=passed, accepted=accepted,
              rejected_by=[rule for rule, ok in passed.items() if not ok],
              kept="evolved" if accepted else "initial")


def results_row(item: Item, image: images_lib.Image, dim: int, out: dict, verdict: dict,
                seconds: float) -> dict:
  fields = predictor.PROMPT_FIELDS[dim]
  h, w = image.size
  kept = out["best"] if verdict["accepted"] else out["initial"]
  row = {"file": item.name, "slice": "" if item.slice is None else item.slice,
         "line": item.line, "width": w, "height": h,
         "intensity": image.intensity, "kind": predictor.PROMPT_KINDS[dim]}
  for name, prompt in (("initial", out["initial"]), ("evolved", out["best"]), ("kept", kept)):
    row.update({f"{name}_{f}": round(float(v), 3) for f, v in zip(fields, prompt)})
  score_kept = out["best_score"] if verdict["accepted"] else out["initial_score"]
  row.update(score_initial=out["initial_score"], score_evolved=out["best_score"],
             score_kept=score_kept, score_gain=out["best_score"] - out["initial_score"],
             iou_initial=out["initial_iou"], iou_evolved=out["best_iou"],
             mask_overlap=float(metrics.dice(out["initial_mask"], out["best_mask"])),
             accepted=verdict["accepted"], kept=verdict["kept"],
             rejected_by=";".join(verdict["rejected_by"]))
  row.update({f"rule_{rule}": ok for rule, ok in verdict["passed"].items()})
  kept_mask = out["best_mask"] if verdict["accepted"] else out["initial_mask"]
  row.update(mask_pixels=int(kept_mask.sum()), best_step=out["best_step"],
             nan_step=out["nan_step"], seconds=round(seconds, 3),
             mask=f"masks/{item.out}.png", overlay=f"overlays/{item.out}.png")
  return row


def _caption(item: Item, out: dict, verdict: dict) -> str:
  kept = verdict["kept"]
  why = "" if verdict["accepted"] else f" (rejected by {', '.join(verdict['rejected_by'])})"
  where = item.name if item.slice is None else f"{item.name} slice {item.slice}"
  return (f"{where}   score {out['initial_score']:.3f} -> {out['best_score']:.3f}   "
          f"kept: {kept}{why}\n"
          f"initial {_prompt_text(out['initial'])}   refined {_prompt_text(out['best'])}")


# ---------------------------------------------------------------------------------------------
# refine: the task.
# ---------------------------------------------------------------------------------------------

def run(config, workdir) -> dict:
  """Task 'refine' (see the module docstring); returns the summary. Under
  config.distributed, each process refines its share and process 0 merges the outputs."""
  index, count = distributed.start(config.distributed)
  return common.run_locked(config, workdir, functools.partial(_run, index=index, count=count),
                           lock=index == 0)


PARTS = "parts"  # WORKDIR/parts/results.K.csv, problems.K.json: each process's, merged by 0


def _merge_parts(workdir: Path, count: int, rows: dict) -> tuple[list, list]:
  """Process 0, after the barrier: every process's new rows into `rows` (by key) and their
  late problems; the parts are then removed. Returns (new rows, problems)."""
  new_rows, problems = [], []
  for k in range(count):
    for row in common.read_csv(workdir / PARTS / f"results.{k}.csv"):
      rows[row_key(row["file"], row.get("slice"))] = row
      new_rows.append(row)
    for record in json.loads((workdir / PARTS / f"problems.{k}.json").read_text()):
      problems.append(errors.BadInputError(record["file"], line=record.get("line"),
                                           reason=record["reason"]))
  shutil.rmtree(workdir / PARTS, ignore_errors=True)
  return new_rows, problems


def _run(config, workdir: Path, mode: str, index: int = 0, count: int = 1) -> dict:
  t_start = time.time()
  if not config.images or not config.prompts:
    raise errors.ConfigError("give the images and the prompts: --config.images=FOLDER_OR_FILE "
                     "--config.prompts=prompts.csv")
  common.check_apart(workdir, images=config.images)
  dim, items, problems, found = plan(config, workdir)
  common.settle(problems, mode)
  kind = predictor.PROMPT_KINDS[dim]
  logging.info("%d image(s) found, %d with a %s prompt; %d bad input(s) skipped.", found,
               len(items), kind, len(problems))
  results_path = workdir / "results.csv"
  previous = {row_key(row["file"], row.get("slice")): row
              for row in common.read_csv(results_path) if row.get("file")}
  stale = sorted(set(previous) - {it.key for it in items})
  if stale and index == 0:  # removed images, or prompts now invalid: their rows and outputs leave
    move_stale(workdir, stale)
    previous = {name: row for name, row in previous.items() if name not in stale}
  key = run_key(config)
  if config.overwrite:
    todo, done = items, []
  else:
    why = {it.key: why_due(workdir, it, previous, dim, key) for it in items}
    todo = [it for it in items if why[it.key] is not None]
    done = [it for it in items if why[it.key] is None]
    for it in todo:
      if why[it.key] != "new":
        logging.info("%s is done again: %s.", it.key, why[it.key])
  if done:
    logging.info("%d image(s) already done (mask, overlay and results row exist): skipped; "
                 "--config.overwrite=True redoes them.", len(done))
  rows = dict(previous)
  new_rows, late_problems = [], []
  # A run of fewer images than config.batch_size pads to its own size (memory grows with the
  # padded lanes: 3 images padded to 8 peaked at 3.8 GB); decided before the images are shared
  # out, so that every process compiles the same program.
  batch_size = max(1, min(int(config.batch_size), len(todo)))
  if count > 1:
    # Whole batches, as one process would form them: an image meets the same companions in a
    # batch, so its numbers are those of a one-process run, to the bit.
    batches = distributed.share([todo[i:i + batch_size]
                                 for i in range(0, len(todo), batch_size)], index, count)
    todo = [item for batch in batches for item in batch]
    logging.info("Process %d of %d: %d image(s) of this run are mine.", index, count, len(todo))
    results_path = workdir / PARTS / f"results.{index}.csv"  # my rows only; 0 merges
    results_path.parent.mkdir(exist_ok=True)
    rows = {}
  refiner = Refiner(config, workdir, batch_size) if todo else None
  last_write = time.time()
  interrupted = False
  reader = Reader()
  try:
    progress = tqdm(total=len(todo), desc="refine", unit="image")
    for first in range(0, len(todo), refiner.batch_size if refiner else 1):
      t0 = time.time()
      loaded = []
      for item in todo[first:first + refiner.batch_size]:
        try:
          image = reader.read(item)
          predictor.check_prompts(item.prompt[None], image.size, ids=[item.name])
        except (errors.BadInputError, ValueError) as e:
          problem = errors.BadInputError(item.name, line=item.line,
                                         reason=getattr(e, "reason", str(e)))
          if mode == "error":
            if rows:  # what this run finished stays done
              common.write_csv(results_path, sorted(rows.values(), key=_order))
            raise errors.BadInputsError([problem]) from e
          logging.warning("Skipping %s", problem)
          late_problems.append(problem)
          if rows.pop(item.key, None) is not None:
            move_stale(workdir, [item.key])
          progress.update(1)
          continue
        loaded.append((item, image))
      if not loaded:
        continue
      t_read = (time.time() - t0) / len(loaded)
      compilations = refiner.evolve_compilations
      outs = refiner.refine_batch([it for it, _ in loaded], [im for _, im in loaded])
      compiled_now = refiner.evolve_compilations > compilations
      for (item, image), out in zip(loaded, outs):
        verdict = judge(config, out)
        t1 = time.time()
        kept_mask = out["best_mask"] if verdict["accepted"] else out["initial_mask"]
        overlay.write_mask(workdir / "masks" / f"{item.out}.png", kept_mask)
        if config.save_initial_masks:
          overlay.write_mask(workdir / "initial_masks" / f"{item.out}.png", out["initial_mask"])
        picture = overlay.draw(image.pixels, out["initial_mask"], out["best_mask"],
                               out["initial"], out["best"], _caption(item, out, verdict),
                               int(config.overlay_max_side))
        overlay.write_png(workdir / "overlays" / f"{item.out}.png", picture)
        t_write = time.time() - t1
        seconds = t_read + out["seconds"]["encode"] + out["seconds"]["evolve"] + t_write
        row = results_row(item, image, dim, out, verdict, seconds)
        row.update(image_sha256=item.sha256, run_key=key)
        rows[item.key] = row
        new_rows.append(row)
        h, w = image.size
        logging.info(
            "%s (%dx%d): %.2f s = read %.2f, encode %.2f, evolve %.2f%s, write %.2f (a share "
            "of a batch of %d); score %.3f -> %.3f, kept %s%s", item.key, w, h, seconds,
            t_read, out["seconds"]["encode"], out["seconds"]["evolve"],
            " (compiling the evolution)" if compiled_now else "", t_write, len(loaded),
            out["initial_score"], out["best_score"], verdict["kept"],
            "" if verdict["accepted"] else f" (rejected by {', '.join(verdict['rejected_by'])})")
        progress.update(1)
      if time.time() - last_write > 10.0:  # a killed run keeps what it finished
        common.write_csv(results_path, sorted(rows.values(), key=_order))
        last_write = time.time()
    progress.close()
  except KeyboardInterrupt:  # Ctrl-C: the image in progress is abandoned (redone next time)
    interrupted = True
  if rows:
    common.write_csv(results_path, sorted(rows.values(), key=_order))
  if count > 1:
    files.write_json(workdir / PARTS / f"problems.{index}.json",
                     [p.record() for p in late_problems])
    if not rows:
      common.write_csv(results_path, [])
    distributed.barrier("refine: every share done")
    if index != 0:
      logging.info("Process %d: %d image(s) refined; process 0 writes results.csv and "
                   "summary.json.", index, len(new_rows))
      return {"task": "refine", "process": index, "processed": len(new_rows)}
    rows = dict(previous)
    new_rows, late_problems = _merge_parts(workdir, count, rows)
    results_path = workdir / "results.csv"
    common.write_csv(results_path, sorted(rows.values(), key=_order))
  problems = common.sort_problems(problems + late_problems)
  written = write_volumes(workdir, items, rows)
  summary = summarize(config, kind, found, items, done, new_rows, problems, refiner,
                      time.time() - t_start)
  summary["mask_volumes"] = written
  summary["processes"] = count
  summary["interrupted"] = interrupted
  files.write_json(workdir / "summary.json", summary)
  if interrupted:
    raise errors.Interrupted(
        f"refine was interrupted after {len(new_rows)} of {len(todo)} image(s); results.csv "
        f"and summary.json in {workdir} hold them. Run the same command again to finish: the "
        "done images are skipped.")
  logging.info("refine: %d processed, %d already done, %d skipped as bad input; %d of %d "
               "evolved prompts kept. Outputs in %s", len(new_rows), len(done), len(problems),
               summary["accepted"], len(new_rows), workdir)
  return summary


def _order(row: dict):
  """results.csv's order: by file, a volume's slices in order."""
  return (row["file"], -1 if row.get("slice") in (None, "") else int(row["slice"]))


class Reader:
  """Reads an item's image; a volume is decoded once for all its slices (the last one kept)."""

  def __init__(self):
    self.volume = None

  def read(self, item: Item) -> images_lib.Image:
    if item.slice is None:
      return images_lib.read_image(item.path)
    if self.volume is None or self.volume.path != item.path:
      self.volume = volumes.read_volume(item.path)
    return volumes.slice_image(self.volume, item.slice)


def write_volumes(workdir: Path, items: list, rows: dict) -> list[str]:
  """masks/<volume>.nii.gz for every volume of the run whose slices are all done: its slices'
  masks stacked (slices without a prompt empty), with the input's affine and header."""
  written = []
  for name in sorted({it.name for it in items if it.slice is not None}):
    slices = [it for it in items if it.name == name]
    if any(it.key not in rows for it in slices):
      continue  # not finished (interrupted, or a bad slice): the next run writes it
    x, y, z = volumes.read_shape(slices[0].path)
    stack = np.zeros((x, y, z), bool)
    for it in slices:
      stack[:, :, it.slice] = np.asarray(Image.open(workdir / "masks" / f"{it.out}.png")).T > 0
    volumes.write_mask(workdir / "masks" / f"{volume_out(name)}.nii.gz", stack, slices[0].path)
    written.append(f"masks/{volume_out(name)}.nii.gz")
  if written:
    logging.info("Mask volumes (the inputs' affine and header): %s", ", ".join(written))
  return written


def summarize(config, kind, found, items, done, new_rows, problems, refiner, seconds) -> dict:
  rejected = {}
  for row in new_rows:
    for rule in filter(None, row["rejected_by"].split(";")):
      rejected[rule] = rejected.get(rule, 0) + 1
  mean = lambda key: float(np.mean([float(r[key]) for r in new_rows])) if new_rows else None
  sizes = {}
  for row in new_rows:
    sizes[f"{row['width']}x{row['height']}"] = sizes.get(f"{row['width']}x{row['height']}", 0) + 1
  return {
      "task": "refine",
      "images": str(config.images), "prompts": str(config.prompts), "prompt_kind": kind,
      "images_found": found, "images_with_prompt": len(items),
      "processed": len(new_rows), "already_done": len(done),
      "skipped": len(problems), "bad_inputs": [p.record() for p in problems],
      "accepted": sum(str(r["accepted"]) == "True" for r in new_rows),  # merged rows: text
      "rejected_by": rejected,
      "mean_score": {"initial": mean("score_initial"), "evolved": mean("score_evolved"),
                     "kept": mean("score_kept")},
      "sizes": sizes,
      # The evolution compiles once for every size (twice at most: a new batch shape); only
      # the final masks' upsampling compiles per image size.
      "evolution_compilations": refiner.evolve_compilations if refiner else 0,
      "batch_size": refiner.batch_size if refiner else None,
      "compiled_programs": len(refiner.compiled) if refiner else 0,
      "regressor_side": refiner.side if refiner else None,
      "sam_variant": refiner.sam.config.variant if refiner else None,
      "seconds": {"total": seconds,
                  "models": refiner.seconds_loading if refiner else 0.0,
                  "per_image_mean": mean("seconds")},
      "config": config.to_dict(),
  }
