"""tasks.common: what every task writes the same way."""
import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from sampot_jax import errors
from sampot_jax.tasks import common


def test_csv_cells_a_spreadsheet_would_run_are_escaped_and_read_back(tmp_path):
  names = ["=cmd|' /C calc'!A0.png", "+a.png", "-b.png", "@c.png", "\tt.png", "\rr.png",
           "'quoted.png", "plain.png"]
  rows = [{"file": n, "score": -0.5, "gain": np.float32(-1.25), "n": -3} for n in names]
  path = tmp_path / "results.csv"
  common.write_csv(path, rows)
  with open(path, newline="", encoding="utf-8") as f:
    raw = list(csv.DictReader(f))
  for row, name in zip(raw, names):
    if name == "plain.png":
      assert row["file"] == name
    else:
      assert row["file"] == "'" + name, row  # shown as text, never run
    assert (row["score"], row["gain"], row["n"]) == ("-0.5", "-1.25", "-3")  # numbers as they are
  assert [r["file"] for r in common.read_csv(path)] == names
  # Read back (text) and written again, as a rerun rewrites earlier rows: the same bytes
  # (a negative number read back as text is not escaped as a formula).
  before = path.read_text()
  common.write_csv(path, common.read_csv(path))
  assert path.read_text() == before


def test_one_run_per_workdir_and_a_dead_runs_lock_is_taken_over(tmp_path, caplog):
  lock = tmp_path / common.LOCK_FILE
  with common.workdir_lock(tmp_path):
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(errors.WorkdirBusyError, match=rf"pid {os.getpid()} .* writing to"):
      with common.workdir_lock(tmp_path):
        pass
  assert not lock.exists()  # released
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                              "started": 0}))
  with caplog.at_level("WARNING"):
    with common.workdir_lock(tmp_path):
      assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert "which has ended: taking it over" in caplog.text and not lock.exists()
