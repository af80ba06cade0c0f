"""Resuming train_regressor safely: the same settings, and checkpoints that are checked.

    check_settings(directory, config)      # before anything is trained or written
    state, step = restore_newest(directory, initial_state)
    save_step(manager, step, state)

workdir/checkpoints/ (the Orbax CheckpointManager's directory) holds:

  settings.json              the settings that shape the training state (written
                             atomically); a resume with other ones is refused
  <step>/                    an Orbax step
  <step>/state_index.json    tree path -> shape, dtype, crc32 of every array of the
                             state (`checkpoints.array_index`), written once the step is
  <step>.unreadable/         a step that could not be restored, moved aside on resume

Changes that do not touch the training state are allowed on purpose (`HARMLESS`),
and so is a larger num_epochs (the history arrays are extended).
"""
import json
import os
from pathlib import Path

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sampot_jax import errors
from sampot_jax.storage import checkpoints
from sampot_jax.storage import files

SETTINGS_FILE = "settings.json"
INDEX_FILE = "state_index.json"
UNREADABLE_SUFFIX = ".unreadable"
# Config fields a resume may change: how long, how often it logs and checkpoints,
# how evaluation is batched, where the candidate cache lives (its file names carry a
# hash of the settings that shape it), and the evaluation after training.
HARMLESS = ("num_epochs", "patience", "log_every", "checkpoint_every", "eval_batch_size",
            "max_checkpoints", "candidates_dir", "sweep_offsets")
# Blocks read only after training (the verdict's SAMPOT runs): any of their fields may change.
HARMLESS_BLOCKS = ("verdict", "evolve", "safeguards")
# Settings added after settings.json was introduced, at the value that reproduces a run
# recorded before them: absent in the old record and at this value now is no difference.
ADDED = {"train_images": 0, "train_images_draw": 0, "init_from": "", "data.label": 0,
         "data.split_seed": 0, "rank.weight": 0.0, "rank.group": 8, "rank.temperature": 20.0,
         "rank.min_gap": 0.02}
HISTORY = ("train_loss", "val_loss", "seconds")  # (num_epochs,) arrays of the state


class _Damaged(Exception):
  """A step whose restored arrays differ from its state_index.json."""


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def settings_that_matter(config) -> dict:
  """{dotted config key: value} of every field but `HARMLESS` (values as JSON reads them)."""
  flat = _flatten(files.json_ready(config.to_dict()))
  return json.loads(json.dumps({k: v for k, v in flat.items()
                                if k not in HARMLESS and k.split(".")[0] not in HARMLESS_BLOCKS},
                               sort_keys=True, default=str))


def _fresh_fix(directory: Path) -> str:
  return (f"To start a new training run instead, use another --workdir, or delete "
          f"{directory} (rm -r {directory}).")


def _steps(directory: Path) -> list[int]:
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def check_settings(directory, config) -> None:
  """Refuses a resume of `directory` (workdir/checkpoints) under other settings.

  With no step saved yet, records this config's settings. Otherwise compares them
  with settings.json: any difference outside `HARMLESS`, or a smaller num_epochs,
  raises errors.ResumeError listing each (old -> new) and how to start fresh. A larger
  num_epochs is recorded. Checkpoints from before settings.json existed are resumed
  with a warning (nothing to compare with) and this config's settings recorded.
  """
  directory = Path(directory)
  path = directory / SETTINGS_FILE
  current = {"format": 1, "num_epochs": int(config.num_epochs),
             "settings": settings_that_matter(config)}
  if not _steps(directory):
    files.write_json(path, current)
    return
  if not path.exists():
    logging.warning("%s has checkpoints but no %s (written before settings were kept): "
                    "they are resumed without comparing settings; recording this run's.",
                    directory, SETTINGS_FILE)
    files.write_json(path, current)
    return
  try:
    stored = json.loads(path.read_text())
    old, old_epochs = stored["settings"], int(stored["num_epochs"])
    if not isinstance(old, dict):
      raise TypeError("'settings' is not a JSON object")
  except (ValueError, KeyError, TypeError, OSError) as e:
    raise errors.ResumeError(f"{path} cannot be read ({e}), so the checkpoints beside it cannot be "
                      f"resumed safely. {_fresh_fix(directory)}") from None
  new = current["settings"]
  absent = "(absent)"
  differ = [(k, old.get(k, absent), new.get(k, absent)) for k in sorted(old.keys() | new.keys())
            if old.get(k, absent) != new.get(k, absent)
            and not (k not in old and k in ADDED and new[k] == ADDED[k])]
  if current["num_epochs"] < old_epochs:
    differ.append(("num_epochs", old_epochs, current["num_epochs"]))
  if differ:
    lines = "\n".join(f"  {k}: {json.dumps(a)} -> {json.dumps(b)}" for k, a, b in differ)
    raise errors.ResumeError(
        f"{directory} holds checkpoints of a training run with other settings; resuming it "
        f"would mix the two. Different (old -> new):\n{lines}\n"
        f"Resume with the old settings (they are in {path}; a larger num_epochs, patience, "
        "log_every, checkpoint_every and eval_batch_size may change), or start fresh. "
        + _fresh_fix(directory))
  if current["num_epochs"] > old_epochs:
    logging.info("Resuming %s with num_epochs %d (was %d).", directory, current["num_epochs"],
                 old_epochs)
    files.write_json(path, current)


def save_step(manager: ocp.CheckpointManager, step: int, state: dict) -> None:
  """Saves `state` as `step` and, once Orbax has finished, its crc32 index beside it."""
  if not manager.save(step, args=ocp.args.StandardSave(state)):
    return
  manager.wait_until_finished()
  index = {"format": 1, "arrays": checkpoints.array_index(state)}
  files.write_json(Path(manager.directory) / str(step) / INDEX_FILE, index)


def _restore_step(manager, step: int, initial: dict) -> dict:
  """One step, checked against its index; the history arrays extended to `initial`'s length."""
  tree = manager.item_metadata(step)
  tree = getattr(tree, "tree", tree)
  saved_epochs = int(tree["train_loss"].shape[0])
  num_epochs = int(initial["train_loss"].shape[0])
  if saved_epochs > num_epochs:
    raise errors.ResumeError(f"it holds {saved_epochs} epochs of history, more than "
                      f"config.num_epochs={num_epochs}")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, initial)
  for name in HISTORY:
    abstract[name] = jax.ShapeDtypeStruct((saved_epochs,), abstract[name].dtype,
                                          sharding=abstract[name].sharding)
  state = dict(manager.restore(step, args=ocp.args.StandardRestore(abstract)))
  index_path = Path(manager.directory) / str(step) / INDEX_FILE
  if index_path.exists():
    problem = checkpoints.index_problem(state, json.loads(index_path.read_text())["arrays"],
                                        str(index_path))
    if problem:
      raise _Damaged(problem)
  else:
    logging.warning("Checkpoint step %d has no %s (saved before indexes were kept, or cut "
                    "short after Orbax finished): restored without a crc32 check.", step,
                    INDEX_FILE)
  for name in HISTORY:
    pad = jnp.full((num_epochs - saved_epochs,), np.nan, state[name].dtype)
    state[name] = jnp.concatenate([state[name], pad])
  return state


def _move_aside(directory: Path, step: int) -> Path:
  target = directory / f"{step}{UNREADABLE_SUFFIX}"
  n = 1
  while target.exists():
    target = directory / f"{step}{UNREADABLE_SUFFIX}-{n}"
    n += 1
  os.replace(directory / str(step), target)
  return target


def restore_newest(directory, initial: dict):
  """The newest readable step of `directory` -> (state, step), or (None, None) if none saved.

  A step Orbax cannot restore, or whose arrays differ from its state_index.json, is
  skipped with a warning naming it and the step used instead; the unreadable steps newer
  than that one are moved aside (renamed <step>.unreadable), so that the run saves
  those steps again. If no step is readable: errors.ResumeError listing each.
  """
  directory = Path(directory)
  if not _steps(directory):
    return None, None
  manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
  unreadable = []
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        state = _restore_step(manager, step, initial)
      except errors.ResumeError:
        raise  # The config does not fit the step; the step itself may be fine.
      except Exception as e:  # Orbax/tensorstore raise many types for damaged files.
        unreadable.append((step, f"{type(e).__name__}: {str(e)[:300]}"))
        logging.warning("Checkpoint step %d in %s is unreadable (%s).", step, directory,
                        unreadable[-1][1])
        continue
      break
    else:
      state = step = None
  finally:
    manager.close()
  if step is None:
    lines = "\n".join(f"  step {s}: {why}" for s, why in unreadable)
    raise errors.ResumeError(f"no checkpoint in {directory} can be restored:\n{lines}\n"
                      + _fresh_fix(directory))
  for bad, _ in unreadable:
    moved = _move_aside(directory, bad)
    logging.warning("Checkpoint step %d was unreadable: moved to %s; resuming from step %d.",
                    bad, moved, step)
  return state, step
