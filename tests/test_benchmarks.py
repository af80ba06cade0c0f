"""The benchmark scripts run (tiny models, a handful of steps) and write complete JSON.

No timing is asserted: figures live in docs/benchmarks.md, measured by the scripts themselves.
--system-malloc: this process has started JAX already, too late for keep_freed_memory (and it
would change malloc for every test after this one).
"""
import json

import pytest

from benchmarks import bench_sam
from benchmarks import bench_sampot

pytestmark = pytest.mark.slow  # each runs a benchmark script end to end


def test_bench_sam_tiny_writes_json(tmp_path):
  out = tmp_path / "sam.json"
  bench_sam.main(["--tiny", "--repeats", "1", "--system-malloc", "--out", str(out)])
  payload = json.loads(out.read_text())
  assert payload["complete"]
  kinds = {(r["kind"], r["batch"]) for r in payload["results"]}
  assert {("encoder", 1), ("encoder", 2), ("decode", 1), ("decode", 2)} <= kinds
  for r in payload["results"]:
    if r.get("check_vs_torch"):
      assert r["check_vs_torch"]["max_rel"] < 1e-4


def test_bench_sampot_tiny_writes_json(tmp_path):
  out = tmp_path / "sampot.json"
  bench_sampot.main(["--tiny", "--repeats", "1", "--system-malloc", "--out", str(out)])
  payload = json.loads(out.read_text())
  assert payload["complete"]
  kinds = [r["kind"] for r in payload["results"]]
  assert kinds[:3] == ["step", "torch_loop", "steps"] and "end_to_end" in kinds
  check = payload["results"][0]["check_vs_torch"]
  assert check["score"]["max_rel"] < 1e-4 and check["grad"]["max_rel"] < 1e-3
