"""What every task does the same way: its workdir, its CSV files, its two frozen models, the
split it evaluates and its cached embeddings."""
import contextlib
import json
import os
from pathlib import Path
import socket
import time

from absl import logging

from sampot_jax import errors
from sampot_jax.regressor import store
from sampot_jax.runtime import settings
from sampot_jax.sam import frozen
from sampot_jax.sam import predictor
from sampot_jax.sampot.scorer import Scorer
from sampot_jax.storage import embedding_cache
from sampot_jax.storage import files


def run_locked(config, path, body, lock: bool = True):
  """A task on users' files: start (settings checked, workdir made), then
  body(config, workdir, on_bad_example mode) under the workdir's lock (one run per workdir;
  `lock=False` for the other processes of a multi-process run, whose process 0 holds it)."""
  workdir = start(config, path)
  if not lock:
    return body(config, workdir, check_mode(config))
  with workdir_lock(workdir):
    return body(config, workdir, check_mode(config))


def start(config, path) -> Path:
  """A task's first step: every shared config block checked against its dataclass
  (runtime.settings; a bad field stops here, named), then the workdir made."""
  settings.check_blocks(config)
  return workdir(path)


def check_apart(workdir: Path, **inputs) -> None:
  """The input folders (name=path, e.g. images=config.images) neither are the workdir nor lie
  inside it (the run would skip every file there as its own output), nor are each other."""
  out = Path(workdir).expanduser().resolve()
  seen = {}
  for name, path in inputs.items():
    folder = Path(path).expanduser().resolve()
    if folder == out or folder.is_relative_to(out):
      raise errors.ConfigError(
          f"--workdir {workdir} holds config.{name}={str(path)!r}: the outputs would mix with "
          f"the inputs and every file there would be skipped as output. Give a --workdir "
          f"outside {path} (a folder inside it is fine).")
    for other, other_folder in seen.items():
      if folder == other_folder:
        raise errors.ConfigError(f"config.{name} and config.{other} are the same folder "
                                 f"({path}); give the {name} in a folder of their own.")
    seen[name] = folder


LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, under another user
    return True
  return True


@contextlib.contextmanager
def workdir_lock(path: Path):
  """One run per workdir: WORKDIR/.lock holds this run's pid, host and start; another live run
  there is a WorkdirBusyError naming it; a lock left by a dead process (same host) is taken over
  with a log line. Removed when the run ends, however it ends."""
  lock = Path(path) / LOCK_FILE
  me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
  for _ in range(2):
    try:
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        owner = json.loads(lock.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
      except (OSError, ValueError, KeyError, TypeError):
        owner, pid, host = {}, -1, me["host"]  # unreadable: left by a run cut short
      if host != me["host"] or (pid > 0 and _alive(pid)):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        raise errors.WorkdirBusyError(
            f"another run (pid {pid} on {host}, started {started}) is writing to {path}: "
            f"wait for it to end, or give another --workdir. If no such run exists, remove "
            f"{lock}.") from None
      logging.warning("%s was left by pid %d, which has ended: taking it over.", lock, pid)
      lock.unlink(missing_ok=True)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  try:
    yield
  finally:
    lock.unlink(missing_ok=True)


def workdir(path) -> Path:
  """--workdir as a Path ('~' expanded), created if absent."""
  if not path:
    raise errors.ConfigError("--workdir is required: the task writes its outputs there.")
  path = Path(path).expanduser()
  path.mkdir(parents=True, exist_ok=True)
  return path


def write_csv(path: Path, rows: list[dict], fields=()) -> None:
  """rows as CSV (atomically): files.csv_text (`fields` first, then other columns in order of
  first appearance, missing cells empty, formulas escaped). No rows and no fields: an empty
  file."""
  files.write_text(path, files.csv_text(rows, fields))


# A CSV this project wrote, as rows of text (storage/files.py).
read_csv = files.read_csv


def load_sam(config) -> frozen.Sam:
  """The run's SAM (config.sam); a missing checkpoint stops it with the commands that make it."""
  return frozen.from_config(config.sam)


def load_scorer(config, check_target: bool = False) -> Scorer:
  """The run's regressor (config.regressor); with check_target, it must have been trained for
  config.data.target."""
  return store.from_config(config.regressor,
                           expected_target=config.data.target if check_target else None,
                           sam_variant=config.sam.variant if "sam" in config else None)


def split_images(config):
  """The evaluated split (config.data, config.split), its first config.max_images (0: all) ->
  (ids, images (N, H, W) uint8, targets (N, H, W) bool: config.data.target, every id of the
  split)."""
  from sampot_jax import data  # pylint: disable=g-import-not-at-top
  lungs = data.load_split(config.data, config.split)
  n = len(lungs.ids) if config.max_images <= 0 else min(config.max_images, len(lungs.ids))
  return (list(lungs.ids[:n]), lungs.images[:n], lungs.target(config.data.target)[:n],
          list(lungs.ids))


def embedding_cache_dir(config) -> Path:
  """config.embedding_cache_dir, else $SAMPOT_CACHE/embeddings."""
  if config.embedding_cache_dir:
    return Path(config.embedding_cache_dir).expanduser()
  from sampot_jax.storage import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.cache_dir() / "embeddings"


def embed(config, sam: frozen.Sam, images):
  """Embeddings through the cache -> ((N, g, g, C) float32, ImageFrame, number encoded now)."""
  cache = embedding_cache.EmbeddingCache(embedding_cache_dir(config), sam.key, sam.config)
  embeddings, encoded = cache.embeddings(
      images, lambda batch: predictor.encode_images(sam.params, batch, sam.config)[0],
      config.encode_batch_size)
  frame = predictor.frame_for(images.shape[1:3], sam.config.img_size)
  logging.info("Embeddings: %d encoded, %d from the cache %s", encoded, len(images) - encoded,
               cache.directory)
  return embeddings, frame, encoded


def output_name(name: str) -> str:
  """'sub/a.dcm' -> 'sub/a': an image's relative path without its suffix (its outputs' name)."""
  path = Path(name)
  return (path.parent / path.stem).as_posix() if path.suffix else path.as_posix()


def check_mode(config) -> str:
  """config.on_bad_example, checked: 'error' or 'skip'."""
  mode = config.on_bad_example
  if mode not in settings.ON_BAD_EXAMPLE:
    raise errors.ConfigError(f"config.on_bad_example={mode!r}; choose one of "
                             f"{settings.ON_BAD_EXAMPLE}.")
  return mode


def settle(problems: list[errors.BadInputError], mode: str) -> None:
  """Bad inputs found: 'error' raises them all together; 'skip' logs each."""
  if not problems:
    return
  if mode == "error":
    raise errors.BadInputsError(problems)
  for p in problems:
    logging.warning("Skipping %s", p)


def sort_problems(problems: list[errors.BadInputError]) -> list[errors.BadInputError]:
  """By CSV line (those without one last), then file."""
  return sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.file))
