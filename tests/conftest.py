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
_FIGURES: dict = {}

_KEEP_TFDS = os.environ.get("SAMPOT_TEST_TFDS_DIR")
TFDS_DIR = _KEEP_TFDS or tempfile.mkdtemp(prefix="sampot-test-tfds-")
os.environ["TFDS_DATA_DIR"] = TFDS_DIR


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if not _KEEP_TFDS:
    shutil.rmtree(TFDS_DIR, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  if item.get_closest_marker("needs_data") and not (MONTGOMERY / "splits.csv").exists():
    pytest.skip(f"real data not found at {MONTGOMERY}")


@pytest.fixture
def record_figure():
  """record_figure(name, dict): a measured figure, shown in the test output's summary."""
  def record(name, value):
    _FIGURES[name] = value
  return record


def pytest_terminal_summary(terminalreporter):
  if _FIGURES:
    terminalreporter.section("measured figures")
    for name, value in sorted(_FIGURES.items()):
      terminalreporter.write_line(f"{name}: {json.dumps(value)}")
