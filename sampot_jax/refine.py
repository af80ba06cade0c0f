"""SAMPOT on a user's own, unlabelled images (task 'refine'), and the regressor as a quality
check of existing masks (task 'score').

    python main.py --config configs/refine.py --config.images=PATH \
        --config.prompts=prompts.csv --workdir OUT
    python main.py --config configs/score.py --config.images=PATH --config.masks=MASKS \
        --workdir OUT

refine, per image (one compiled call per image; programs are cached per image size, so a
folder of one size compiles once and every new size compiles again):

  read (data/images.py) -> SAM encoder -> evolve_prompts (the user's prompt moved by gradient
  ascent on the regressor's score) -> masks of both prompts at the original size ->
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
frame are that square: `regressor_frame` gives evolve_prompts a frame whose valid region is the
whole model frame, and evolve's soft mask is then SAM's mask of the padded square, aligned with
the image. The final masks are decoded again with the true frame (evolve_prompts' own masks,
made with the regressor's frame, are not used).

Bad inputs (config.on_bad_example): an image without a prompt row, a row without an image, a
row that does not parse or repeats an image, a prompt outside its image, an unreadable or
corrupt file. 'error' stops with every problem found, each naming the file and the CSV line;
'skip' logs and skips them and lists them in summary.json. Problems visible from the CSV and
the file headers are found before any model is loaded.
"""
import csv
import dataclasses
import io
from pathlib import Path
import time
import zlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sampot_jax import defaults
from sampot_jax import embedding_cache
from sampot_jax import evolve
from sampot_jax import files
from sampot_jax import metrics
from sampot_jax import models
from sampot_jax import overlay
from sampot_jax import safeguards
from sampot_jax.data import images as images_lib
from sampot_jax.data import prompt_table
from sampot_jax.sam import predictor

BadInputError = prompt_table.BadInputError
DEFAULT_REGRESSOR_SIDE = 256


class BadInputsError(ValueError):
  """Bad inputs with config.on_bad_example='error': every one, each naming its file and line."""

  def __init__(self, problems: list[BadInputError]):
    self.problems = problems
    shown = "\n".join(f"  {p}" for p in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    super().__init__(
        f"{len(problems)} bad input(s) (config.on_bad_example='error'; 'skip' logs and skips "
        f"them):\n{shown}{more}")


# ---------------------------------------------------------------------------------------------
# Helpers shared by both tasks.
# ---------------------------------------------------------------------------------------------

def regressor_resolution(score_fn) -> int:
  """The side S at which the regressor runs (its config's `resolution`)."""
  model = getattr(score_fn, "keywords", {}).get("model")
  side = getattr(model, "resolution", None)
  if side is None:
    logging.warning("The scorer does not say its resolution; the regressor sees %d x %d.",
                    DEFAULT_REGRESSOR_SIDE, DEFAULT_REGRESSOR_SIDE)
    return DEFAULT_REGRESSOR_SIDE
  return int(side)


def regressor_frame(frame: predictor.ImageFrame, img_size: int) -> predictor.ImageFrame:
  """The frame handed to evolve_prompts: the true original size (prompts, clipping), and the
  whole img_size model frame as the valid region, so that evolve's soft mask covers the image
  padded to a square, as `images.to_square` pads the image the regressor sees."""
  return predictor.ImageFrame((int(img_size), int(img_size)), tuple(frame.original_size))


def output_name(name: str) -> str:
  """'sub/a.dcm' -> 'sub/a': the image's relative path without its suffix."""
  path = Path(name)
  return (path.parent / path.stem).as_posix() if path.suffix else path.as_posix()


def _check_mode(config) -> str:
  mode = config.get("on_bad_example", "error")
  if mode not in defaults.ON_BAD_EXAMPLE:
    raise ValueError(f"config.on_bad_example={mode!r}; choose one of {defaults.ON_BAD_EXAMPLE}.")
  return mode


def _settle(problems: list[BadInputError], mode: str) -> None:
  """'error': raise them all; 'skip': log each."""
  if not problems:
    return
  if mode == "error":
    raise BadInputsError(problems)
  for p in problems:
    logging.warning("Skipping %s", p)


def _sort_problems(problems):
  return sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.file))


def _workdir(workdir) -> Path:
  if not workdir:
    raise ValueError("--workdir is required: the outputs are written there.")
  workdir = Path(workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  return workdir


def _write_csv(path: Path, rows: list[dict]) -> None:
  fields = []
  for row in rows:
    fields += [k for k in row if k not in fields]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(path, buffer.getvalue())


def _read_csv(path: Path) -> list[dict]:
  if not path.is_file():
    return []
  try:
    with open(path, newline="", encoding="utf-8") as f:
      return list(csv.DictReader(f))
  except (OSError, csv.Error, UnicodeDecodeError) as e:
    logging.warning("%s cannot be read (%s); it is rewritten from this run's rows.", path, e)
    return []


def _load_models(config, need_sam: bool = True):
  try:
    sam = models.sam_from_config(config.sam) if need_sam else None
    scorer = models.scorer_from_config(config.regressor)
  except (models.MissingCheckpointError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  return sam, scorer


# ---------------------------------------------------------------------------------------------
# refine: planning (no models).
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Item:
  """One image to refine."""
  name: str        # relative to config.images, as in the CSV
  path: Path
  line: int        # its row in the prompts CSV
  prompt: np.ndarray  # (D,) float64 original pixels
  out: str         # output name: masks/<out>.png, overlays/<out>.png


def plan(config, workdir: Path) -> tuple[int, list[Item], list[BadInputError], int]:
  """The images and prompts of a run, checked against each other and against the image headers.

  Returns (D, items, problems, number of images found); nothing is decoded but headers.
  """
  found = images_lib.list_images(config.images, exclude=[workdir])
  dim, rows, bad_rows = prompt_table.read_prompts(config.prompts)
  pairs, problems = prompt_table.match(found, rows, bad_rows)
  by_out: dict[str, list[str]] = {}
  for name, _ in pairs:
    by_out.setdefault(output_name(name), []).append(name)
  items = []
  for name, row in pairs:
    out = output_name(name)
    if len(by_out[out]) > 1:
      others = [n for n in by_out[out] if n != name]
      problems.append(BadInputError(name, row.line, f"its outputs masks/{out}.png would overwrite "
                                    f"those of {others}; rename one of the files"))
      continue
    try:
      size = images_lib.read_size(found[name])
    except images_lib.ImageReadError as e:
      problems.append(BadInputError(name, row.line, e.reason))
      continue
    try:
      predictor.check_prompts(row.prompt[None], size, ids=[name])
    except ValueError as e:
      problems.append(BadInputError(name, row.line, str(e)))
      continue
    items.append(Item(name, found[name], row.line, row.prompt, out))
  return dim, items, _sort_problems(problems), len(found)


def _same_prompt(row: dict, prompt: np.ndarray, dim: int) -> bool:
  try:
    old = np.array([float(row[f"initial_{f}"]) for f in predictor.PROMPT_FIELDS[dim]])
  except (KeyError, ValueError, TypeError):
    return False
  return bool(np.allclose(old, prompt, atol=1e-3, rtol=0))


def is_done(workdir: Path, item: Item, previous: dict, dim: int) -> bool:
  """Its mask, overlay and a results row for the same prompt exist."""
  row = previous.get(item.name)
  return (row is not None and row.get("kind") == predictor.PROMPT_KINDS[dim]
          and _same_prompt(row, item.prompt, dim)
          and (workdir / "masks" / f"{item.out}.png").is_file()
          and (workdir / "overlays" / f"{item.out}.png").is_file())


# ---------------------------------------------------------------------------------------------
# refine: one image.
# ---------------------------------------------------------------------------------------------

def scaled_settings(settings: evolve.Settings, size: tuple[int, int],
                    reference_side: float) -> evolve.Settings:
  """Step size, restart jitter and smallest box side given for a `reference_side` image, scaled
  to this one's longest side (0 = the pixels as given)."""
  if not reference_side or reference_side <= 0:
    return settings
  factor = max(size) / float(reference_side)
  return dataclasses.replace(settings, learning_rate=settings.learning_rate * factor,
                             restart_jitter=settings.restart_jitter * factor,
                             min_box_size=settings.min_box_size * factor)


class Refiner:
  """The frozen models of a run and what it needs per image."""

  def __init__(self, config, workdir: Path):
    t0 = time.time()
    sam, scorer = _load_models(config)
    self.sam_params, self.sam_config, sam_key = sam
    self.score_fn, self.score_variables = scorer
    self.side = regressor_resolution(self.score_fn)
    self.settings = evolve.settings_from_config(config.evolve)
    self.reference_side = float(config.get("reference_side", 0) or 0)
    self.safeguards = config.safeguards
    self.key = jax.random.key(int(config.seed))
    self.cache = (embedding_cache.EmbeddingCache(config.embedding_cache_dir, sam_key,
                                                 self.sam_config)
                  if config.get("embedding_cache_dir") else None)
    self.compiled: set = set()
    self.seconds_loading = time.time() - t0
    logging.info("Models loaded in %.1f s: SAM %s (%s), regressor at %d x %d.",
                 self.seconds_loading, self.sam_config.variant, sam_key, self.side, self.side)

  def encode(self, pixels: np.ndarray):
    if self.cache is not None:
      embeddings, frame, _ = self.cache.embeddings(self.sam_params, [pixels], 1)
      return jnp.asarray(embeddings), frame
    return predictor.encode_images(self.sam_params, pixels[None], self.sam_config)

  def refine(self, item: Item, image: images_lib.Image) -> dict:
    """Evolves one image's prompt; returns host arrays and timings."""
    seconds = {}
    t0 = time.time()
    embeddings, frame = self.encode(image.pixels)
    embeddings = jax.block_until_ready(embeddings)
    seconds["encode"] = time.time() - t0
    t0 = time.time()
    small = images_lib.to_square(image.gray, self.side)[None]
    settings = scaled_settings(self.settings, image.size, self.reference_side)
    rng = jax.random.fold_in(self.key, zlib.crc32(item.name.encode()) & 0x7FFFFFFF)
    result = evolve.evolve_prompts(
        self.sam_params, self.sam_config, self.score_fn, self.score_variables, embeddings,
        regressor_frame(frame, self.sam_config.img_size), jnp.asarray(small),
        item.prompt[None].astype(np.float32), settings, rng=rng)
    initial = np.asarray(result.initial_prompt)[0]
    best = np.asarray(result.best_prompt)[0]
    masks, ious = predictor.prompt_masks(self.sam_params, self.sam_config, embeddings, frame,
                                         np.stack([initial, best])[None])
    masks, ious = np.asarray(masks)[0], np.asarray(ious)[0]
    seconds["evolve"] = time.time() - t0
    first = (image.size, settings) not in self.compiled
    self.compiled.add((image.size, settings))
    return dict(initial=initial, best=best, initial_score=float(result.initial_score[0]),
                best_score=float(result.best_score[0]), initial_mask=masks[0],
                best_mask=masks[1], initial_iou=float(ious[0]), best_iou=float(ious[1]),
                best_step=int(result.best_step[0]),
                nan_step=int(np.asarray(result.nan_step)[0].min()), seconds=seconds,
                compiled=first)


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
  row = {"file": item.name, "line": item.line, "width": w, "height": h,
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
  return (f"{item.name}   score {out['initial_score']:.3f} -> {out['best_score']:.3f}   "
          f"kept: {kept}{why}\n"
          f"initial {_prompt_text(out['initial'])}   refined {_prompt_text(out['best'])}")


# ---------------------------------------------------------------------------------------------
# refine: the task.
# ---------------------------------------------------------------------------------------------

def run(config, workdir) -> dict:
  """Task 'refine' (see the module docstring); returns the summary."""
  t_start = time.time()
  workdir = _workdir(workdir)
  mode = _check_mode(config)
  if not config.get("images") or not config.get("prompts"):
    raise ValueError("give the images and the prompts: --config.images=FOLDER_OR_FILE "
                     "--config.prompts=prompts.csv")
  dim, items, problems, found = plan(config, workdir)
  _settle(problems, mode)
  kind = predictor.PROMPT_KINDS[dim]
  logging.info("%d image(s) found, %d with a %s prompt; %d bad input(s) skipped.", found,
               len(items), kind, len(problems))
  results_path = workdir / "results.csv"
  previous = {row["file"]: row for row in _read_csv(results_path) if row.get("file")}
  if config.overwrite:
    todo, done = items, []
  else:
    todo = [it for it in items if not is_done(workdir, it, previous, dim)]
    done = [it for it in items if it not in todo]
  if done:
    logging.info("%d image(s) already done (mask, overlay and results row exist): skipped; "
                 "--config.overwrite=True redoes them.", len(done))
  rows = dict(previous)
  new_rows, late_problems = [], []
  refiner = Refiner(config, workdir) if todo else None
  last_write = time.time()
  for item in tqdm(todo, desc="refine", unit="image"):
    t0 = time.time()
    try:
      image = images_lib.read_image(item.path)
      predictor.check_prompts(item.prompt[None], image.size, ids=[item.name])
    except (images_lib.ImageReadError, ValueError) as e:
      problem = BadInputError(item.name, item.line, getattr(e, "reason", str(e)))
      if mode == "error":
        if rows:  # what this run finished stays done
          _write_csv(results_path, sorted(rows.values(), key=lambda r: r["file"]))
        raise BadInputsError([problem]) from e
      logging.warning("Skipping %s", problem)
      late_problems.append(problem)
      rows.pop(item.name, None)
      continue
    t_read = time.time() - t0
    out = refiner.refine(item, image)
    verdict = judge(config, out)
    t1 = time.time()
    kept_mask = out["best_mask"] if verdict["accepted"] else out["initial_mask"]
    overlay.write_mask(workdir / "masks" / f"{item.out}.png", kept_mask)
    if config.get("save_initial_masks", False):
      overlay.write_mask(workdir / "initial_masks" / f"{item.out}.png", out["initial_mask"])
    picture = overlay.draw(image.pixels, out["initial_mask"], out["best_mask"], out["initial"],
                           out["best"], _caption(item, out, verdict),
                           int(config.get("overlay_max_side", 1024)))
    overlay.write_png(workdir / "overlays" / f"{item.out}.png", picture)
    t_write = time.time() - t1
    seconds = time.time() - t0
    row = results_row(item, image, dim, out, verdict, seconds)
    rows[item.name] = row
    new_rows.append(row)
    h, w = image.size
    logging.info(
        "%s (%dx%d): %.2f s = read %.2f, encode %.2f, evolve %.2f%s, write %.2f; score %.3f -> "
        "%.3f, kept %s%s", item.name, w, h, seconds, t_read, out["seconds"]["encode"],
        out["seconds"]["evolve"], f" (compiling for {w}x{h})" if out["compiled"] else "",
        t_write, out["initial_score"], out["best_score"], verdict["kept"],
        "" if verdict["accepted"] else f" (rejected by {', '.join(verdict['rejected_by'])})")
    if time.time() - last_write > 10.0:  # a killed run keeps what it finished
      _write_csv(results_path, sorted(rows.values(), key=lambda r: r["file"]))
      last_write = time.time()
  if rows:
    _write_csv(results_path, sorted(rows.values(), key=lambda r: r["file"]))
  problems = _sort_problems(problems + late_problems)
  summary = summarize(config, kind, found, items, done, new_rows, problems, refiner,
                      time.time() - t_start)
  files.write_json(workdir / "summary.json", summary)
  logging.info("refine: %d processed, %d already done, %d skipped as bad input; %d of %d "
               "evolved prompts kept. Outputs in %s", len(new_rows), len(done), len(problems),
               summary["accepted"], len(new_rows), workdir)
  return summary


def summarize(config, kind, found, items, done, new_rows, problems, refiner, seconds) -> dict:
  rejected = {}
  for row in new_rows:
    for rule in filter(None, row["rejected_by"].split(";")):
      rejected[rule] = rejected.get(rule, 0) + 1
  mean = lambda key: float(np.mean([r[key] for r in new_rows])) if new_rows else None
  sizes = {}
  for row in new_rows:
    sizes[f"{row['width']}x{row['height']}"] = sizes.get(f"{row['width']}x{row['height']}", 0) + 1
  return {
      "task": "refine",
      "images": str(config.images), "prompts": str(config.prompts), "prompt_kind": kind,
      "images_found": found, "images_with_prompt": len(items),
      "processed": len(new_rows), "already_done": len(done),
      "skipped": len(problems), "bad_inputs": [p.record() for p in problems],
      "accepted": sum(bool(r["accepted"]) for r in new_rows),
      "rejected_by": rejected,
      "mean_score": {"initial": mean("score_initial"), "evolved": mean("score_evolved"),
                     "kept": mean("score_kept")},
      "sizes": sizes,
      "compiled_programs": len(refiner.compiled) if refiner else 0,
      "regressor_side": refiner.side if refiner else None,
      "sam_variant": refiner.sam_config.variant if refiner else None,
      "seconds": {"total": seconds,
                  "models": refiner.seconds_loading if refiner else 0.0,
                  "per_image_mean": mean("seconds")},
      "config": config.to_dict(),
  }


# ---------------------------------------------------------------------------------------------
# score: the regressor's predicted Dice of existing masks.
# ---------------------------------------------------------------------------------------------

def score(config, workdir) -> dict:
  """Task 'score': predicted Dice of each mask in config.masks for the image of the same name
  (path relative to its folder, suffix ignored) in config.images -> scores.csv, summary.json."""
  t_start = time.time()
  workdir = _workdir(workdir)
  mode = _check_mode(config)
  if not config.get("images") or not config.get("masks"):
    raise ValueError("give the images and their masks: --config.images=PATH "
                     "--config.masks=PATH (masks matched by file name)")
  masks_root = Path(config.masks).expanduser()
  found = images_lib.list_images(config.images, exclude=[workdir, masks_root])
  found_masks = images_lib.list_images(masks_root, exclude=[workdir])
  problems = []
  image_keys, mask_keys = {}, {}
  for table, keys in ((found, image_keys), (found_masks, mask_keys)):
    for name in table:
      keys.setdefault(output_name(name), []).append(name)
  pairs = []
  for key, names in sorted(image_keys.items()):
    if len(names) > 1:
      problems += [BadInputError(n, None, f"images {names} share the name {key!r}; a mask "
                                 "cannot say which it belongs to") for n in names]
    elif key not in mask_keys:
      problems.append(BadInputError(names[0], None, f"no mask named {key}.* in config.masks"))
    elif len(mask_keys[key]) > 1:
      problems.append(BadInputError(names[0], None, f"several masks {mask_keys[key]} match it"))
    else:
      pairs.append((names[0], mask_keys[key][0]))
  for key, names in sorted(mask_keys.items()):
    if key not in image_keys:
      problems += [BadInputError(n, None, f"a mask without an image named {key}.* in "
                                 "config.images", source="masks") for n in names]
  _settle(problems, mode)
  _, (score_fn, variables) = _load_models(config, need_sam=False)
  side = regressor_resolution(score_fn)
  batch = max(1, int(config.get("batch_size", 8)))
  scorer = jax.jit(lambda v, image, mask: score_fn(v, image, mask))
  rows, pending = [], []

  def flush():
    if not pending:
      return
    n = len(pending)
    images_ = np.zeros((batch, side, side), np.float32)
    masks_ = np.zeros((batch, side, side), np.float32)
    for i, (_, image_small, mask_small) in enumerate(pending):
      images_[i], masks_[i] = image_small, mask_small
    scores = np.asarray(scorer(variables, images_, masks_))[:n]  # one program: full batches
    for (row, _, _), s in zip(pending, scores):
      row["score"] = float(s)
      rows.append(row)
    pending.clear()

  for name, mask_name in tqdm(pairs, desc="score", unit="image"):
    try:
      image = images_lib.read_image(found[name])
      mask = images_lib.read_mask(found_masks[mask_name])
      if mask.shape != image.size:
        raise images_lib.ImageReadError(
            found_masks[mask_name], f"the mask is {mask.shape[1]}x{mask.shape[0]} (W x H) but "
            f"the image {name} is {image.size[1]}x{image.size[0]}")
    except images_lib.ImageReadError as e:
      problem = BadInputError(name, None, str(e))
      if mode == "error":
        raise BadInputsError([problem]) from e
      logging.warning("Skipping %s", problem)
      problems.append(problem)
      continue
    row = {"file": name, "mask": mask_name, "width": image.size[1], "height": image.size[0],
           "intensity": image.intensity, "mask_pixels": int(mask.sum())}
    pending.append((row, images_lib.to_square(image.gray, side),
                    images_lib.to_square(mask.astype(np.float32), side)))
    if len(pending) == batch:
      flush()
  flush()
  if rows:
    _write_csv(workdir / "scores.csv", rows)
  summary = {"task": "score", "images": str(config.images), "masks": str(config.masks),
             "scored": len(rows), "skipped": len(problems),
             "bad_inputs": [p.record() for p in _sort_problems(problems)],
             "mean_score": float(np.mean([r["score"] for r in rows])) if rows else None,
             "regressor_side": side, "seconds": time.time() - t_start,
             "config": config.to_dict()}
  files.write_json(workdir / "summary.json", summary)
  logging.info("score: %d mask(s) scored (mean predicted Dice %s), %d skipped. %s",
               len(rows), summary["mean_score"], len(problems), workdir / "scores.csv")
  return summary
