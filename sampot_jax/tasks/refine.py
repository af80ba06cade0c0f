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

The models' part (encode, evolve, decode, safeguards, the results row) is sampot/refiner.py,
which the web page (task 'app') shares.
"""
import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
import shutil
import time

from absl import logging
import numpy as np
from PIL import Image
from tqdm import tqdm

from sampot_jax import errors
from sampot_jax.data import dicom_series
from sampot_jax.data import images as images_lib
from sampot_jax.data import prompt_csv
from sampot_jax.data import volumes
from sampot_jax.report import overlay
from sampot_jax.regressor import shipped
from sampot_jax.sam import predictor
from sampot_jax.runtime import distributed
from sampot_jax.sampot import refiner as refiner_lib
from sampot_jax.storage import checkpoints
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
  """'sub/ct.nii.gz' -> 'sub/ct', a DICOM series folder 'sub/ct.1' -> 'sub/ct.1': a volume's
  outputs' name (masks/<it>.nii.gz, masks/<it>/slice_0007.png)."""
  for suffix in images_lib.VOLUME_SUFFIXES[::-1]:
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return name


def plan(config, workdir: Path) -> tuple[int, list[Item], list[errors.BadInputError], int]:
  """The images and prompts of a run, checked against each other and against the image headers.

  Returns (D, items, problems, number of images found); nothing is decoded but headers.
  """
  found = images_lib.list_images(config.images, exclude=[workdir], volumes=True)
  dim, rows, bad_rows = prompt_csv.read_prompts(config.prompts)
  found = dicom_series.fold_series(found, config.images, [row.key for row in rows])
  pairs, problems = prompt_csv.match(found, rows, bad_rows)
  outs = {name: volume_out(name) if volumes.is_volume(found[name]) else common.output_name(name)
          for name, _ in pairs}
  by_out: dict[str, set[str]] = {}
  for name, _ in pairs:
    by_out.setdefault(outs[name], set()).add(name)
  items, shapes, hashes = [], {}, {}
  for name, row in pairs:
    out = outs[name]
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
  """sha256 (hex) of a file's bytes (a DICOM series: of its files' names and sha256s): an image
  replaced under the same name is another image."""
  if not dicom_series.is_series(path):
    return checkpoints.sha256_file(path)
  digest = hashlib.sha256()
  for f in dicom_series.series_files(path):
    digest.update(f"{f.name}\0{checkpoints.sha256_file(f)}\n".encode())
  return digest.hexdigest()


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

class Refiner(refiner_lib.Refiner):
  """sampot.refiner.Refiner with the run's models, loaded from the config (and timed)."""

  def __init__(self, config, workdir: Path, batch_size: int | None = None):
    del workdir
    t0 = time.time()
    super().__init__(common.load_sam(config), common.load_scorer(config), config, batch_size)
    self.seconds_loading = time.time() - t0
    logging.info("Models loaded in %.1f s: SAM %s (%s), regressor at %d x %d; %d image(s) per "
                 "compiled call.", self.seconds_loading, self.sam.config.variant, self.sam.key,
                 self.side, self.side, self.batch_size)


def _prompt_text(prompt) -> str:
  return "(" + ", ".join(f"{v:.1f}" for v in np.asarray(prompt)) + ")"


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
        verdict = refiner_lib.judge(config, out)
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
        row = refiner_lib.results_row(item, image, dim, out, verdict, seconds)
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
