"""Shared fixtures; parity figures measured by tests are printed at the end of the run."""
import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
MONTGOMERY = SHARED / "data" / "montgomery"
_FIGURES: dict = {}


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
