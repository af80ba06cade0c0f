"""tasks.common: what every task writes the same way."""
import csv

import numpy as np

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
