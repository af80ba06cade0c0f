"""XLA:CPU flag sets side by side on this CPU: which flags to switch on (sampot_jax.runtime.cpu).

    python -m benchmarks.bench_xla_cpu --out benchmarks/results/xla_cpu_flags_cpu.json
    python -m benchmarks.bench_xla_cpu --tiny --out /tmp/xla_cpu_tiny.json      # smoke

XLA reads XLA_FLAGS once per process, so each flag set and workload runs in a subprocess of its
own (a worker); the flag sets take turns, round after round, so that a burst of load from other
processes hits them alike. A figure is the median over rounds of each worker's median. Workers
run with the allocator setting main.py uses, and record the library fusions XLA compiled the
workload's dots into (`__onednn_fusion`, `__ynn_fusion` in the optimised HLO: a flag that does
nothing shows there), and their outputs, which the parent compares with the first flag set's. A
worker that crashes (an XLA abort) is recorded as such, with the end of its stderr.

Workloads (all float32 unless named; random weights, same seed in every worker):
  matmul        2048 x 2048 x 2048 float32 and bfloat16 (GFLOP/s), PyTorch beside it once
  lite_encoder  LiteMedSAM's TinyViT encoder, 256 px, batch 1
  sampot_step   one SAMPOT step on vit_b's decoder (value and click gradient, Adam), one image
  vit_b_encoder SAM vit_b's encoder, batch 1 (13 s per image here; not in the default list)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from sampot_jax.runtime import cpu as runtime

FLAG_SETS = {
    "default": "",
    "onednn_dot": " ".join(runtime.ONEDNN_DOT),
    "ynn_eltwise": "--xla_cpu_experimental_ynn_fusion_type=+eltwise",
    "no_ynnpack": "--xla_cpu_experimental_ynn_fusion_type=",
    # YNNPACK for dots only: no reductions (and the elementwise work around them) in its fusions.
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "ynn_individual_dot": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "fast_math": "--xla_cpu_enable_fast_math=true",
}
WORKLOADS = ("matmul", "lite_encoder", "sampot_step", "vit_b_encoder")
DEFAULT_WORKLOADS = "matmul,lite_encoder,sampot_step"


# --- worker (one flag set, one process) --------------------------------------------------------

def _random_params(config, seed=0, scale=0.05):
  """Random parameters of the model's shapes, cheaply (no init pass through the encoder)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sampot_jax.sam import model as sam_model  # pylint: disable=g-import-not-at-top
  shapes = sam_model.param_shapes(config)
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in zip(jax.tree_util.tree_flatten_with_path(shapes)[0], leaves):
    name = jax.tree_util.keystr(path[0])
    if "running_var" in name:
      out.append(rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32))
    else:
      out.append((rng.standard_normal(leaf.shape) * scale).astype(np.float32))
  return jax.tree.unflatten(treedef, [jax.numpy.asarray(x) for x in out])


def _fusions(compiled_text: str) -> dict:
  return {kind: compiled_text.count(f'"kind":"__{kind}_fusion"') for kind in ("onednn", "ynn")}


def _time(fn, repeats):
  start = time.perf_counter()
  out = fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return out, dict(first_s=first, times_s=times, median_s=float(np.median(times)),
                   loadavg=common.loadavg())


def _workload(name: str, tiny: bool):
  """-> [(figure, jitted fn, args, flops or None)]."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sampot_jax.sam import model as sam_model  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  if name == "matmul":
    n = 256 if tiny else 2048
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    mm = jax.jit(lambda x, y: x @ y)
    return [(f"matmul {n} {dt}", mm, (jnp.asarray(a, dt), jnp.asarray(b, dt)), 2.0 * n**3)
            for dt in ("float32", "bfloat16")]
  if name in ("lite_encoder", "vit_b_encoder"):
    from benchmarks import bench_sam  # pylint: disable=g-import-not-at-top
    if name == "lite_encoder":
      config = sam_model.sam_config("lite_medsam", **(bench_sam.TINY_LITE if tiny else {}))
    else:
      config = sam_model.sam_config("vit_b", **(bench_sam.TINY if tiny else {}))
    params = _random_params(config)
    x = jnp.asarray(rng.uniform(-2, 2, (1, config.img_size, config.img_size, 3)), jnp.float32)
    frozen = sam_model._frozen(config)  # pylint: disable=protected-access
    encode = jax.jit(lambda p, v: sam_model.encode(p, v, frozen))
    return [(f"{name.replace('_', ' ')}, batch 1", encode, (params, x), None)]
  if name == "sampot_step":
    from benchmarks import bench_sam, bench_sampot  # pylint: disable=g-import-not-at-top
    from sampot_jax.regressor import model as regressor  # pylint: disable=g-import-not-at-top
    from sampot_jax.sam import predictor  # pylint: disable=g-import-not-at-top
    config = sam_model.sam_config("vit_b", **(bench_sam.TINY if tiny else {}))
    params = _random_params(config)
    g = config.img_size // config.patch_size
    model, variables = bench_sampot.make_regressor(4 * g, tiny)
    frame = predictor.frame_for((config.img_size,) * 2, config.img_size)
    emb = jnp.asarray(rng.standard_normal((g, g, config.prompt_embed_dim)), jnp.float32)
    image = jnp.asarray(rng.uniform(0, 1, (4 * g, 4 * g)), jnp.float32)
    click = jnp.asarray([0.4, 0.55], jnp.float32) * config.img_size
    step, state = bench_sampot.jax_step(params, sam_model._frozen(config), frame, emb, image,  # pylint: disable=protected-access
                                        regressor.make_scorer(model), variables, click)
    return [("SAMPOT step, vit_b decoder, one image", step, (click, state), None)]
  raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


def worker(workloads, repeats, tiny, outputs_path, torch_matmul):
  """Runs in the subprocess: times each workload under the XLA_FLAGS it was started with."""
  import jax  # pylint: disable=g-import-not-at-top
  results, outputs = [], {}
  for name in workloads:
    for figure, fn, args, flops in _workload(name, tiny):
      compiled = fn.lower(*args).compile()
      out, stats = _time(lambda: jax.block_until_ready(compiled(*args)), repeats)
      leaves = [np.asarray(x, np.float32) for x in jax.tree.leaves(out)]
      outputs[figure] = np.concatenate([x.ravel() for x in leaves])
      entry = dict(workload=name, figure=figure, fusions=_fusions(compiled.as_text()), **stats)
      if flops:
        entry["gflops_per_s"] = flops / stats["median_s"] / 1e9
      results.append(entry)
      if torch_matmul and name == "matmul":
        results.append(_torch_matmul(figure, args, flops, repeats))
  np.savez(outputs_path, **{k.replace(" ", "_"): v for k, v in outputs.items()})
  print("RESULTS " + json.dumps(results))


def _torch_matmul(figure, args, flops, repeats):
  import torch  # pylint: disable=g-import-not-at-top
  common.setup_threads()
  dtype = torch.bfloat16 if "bfloat16" in figure else torch.float32
  a, b = (torch.from_numpy(np.asarray(x, np.float32)).to(dtype) for x in args)
  if dtype == torch.bfloat16 and not torch.cuda.is_available():
    repeats = 1  # seconds per call on a CPU without bf16 units (13 s here): once is enough
  _, stats = _time(lambda: a @ b, repeats)
  return dict(workload="matmul", figure=figure, framework="torch", **stats,
              gflops_per_s=flops / stats["median_s"] / 1e9)


# --- parent ------------------------------------------------------------------------------------

def run_worker(flags: str, workload: str, args, outputs_path: Path, torch_matmul: bool) -> list:
  """One worker's results, or one entry per workload saying how it crashed."""
  env = dict(os.environ, XLA_FLAGS=flags)
  env.pop(runtime.ENV_VAR, None)
  cmd = [sys.executable, "-m", "benchmarks.bench_xla_cpu", "--worker", "--workloads", workload,
         "--repeats", str(args.repeats), "--outputs", str(outputs_path)]
  cmd += ["--tiny"] * args.tiny + ["--torch-matmul"] * torch_matmul
  cmd += [args.system_malloc_flag] if args.system_malloc_flag else []
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        cwd=Path(__file__).resolve().parent.parent, check=False)
  line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")), None)
  if proc.returncode or line is None:
    tail = [l for l in proc.stderr.splitlines() if "Warning" not in l][-3:]
    return [dict(workload=workload, crashed=f"exit status {proc.returncode}: {' | '.join(tail)}",
                 loadavg=common.loadavg())]
  return json.loads(line[len("RESULTS "):])


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", help="JSON file to write (rewritten after every round)")
  p.add_argument("--tiny", action="store_true", help="small shapes and models: a smoke run")
  p.add_argument("--flag-sets", default=",".join(FLAG_SETS),
                 help=f"names from {sorted(FLAG_SETS)}, or NAME=FLAGS; 'auto': this CPU's choice "
                      "(sampot_jax.runtime.cpu.xla_cpu_flags)")
  p.add_argument("--workloads", default=DEFAULT_WORKLOADS, help=f"from {WORKLOADS}")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--repeats", type=int, default=5, help="timed calls per worker")
  p.add_argument(common.SYSTEM_MALLOC, action="store_true", help=common.SYSTEM_MALLOC_HELP)
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--outputs", help=argparse.SUPPRESS)
  p.add_argument("--torch-matmul", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.workloads = [w for w in args.workloads.split(",") if w]
  args.system_malloc_flag = common.SYSTEM_MALLOC if args.system_malloc else ""
  return args


def flag_sets(spec: str) -> dict:
  out = {}
  for item in spec.split(","):
    name, sep, flags = item.partition("=")
    if sep:
      out[name] = flags
    elif name == "auto":
      out["auto"] = " ".join(runtime.xla_cpu_flags(runtime.cpu_features()))
    else:
      out[name] = FLAG_SETS[name]
  return out


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if "--worker" in argv:
    common.setup_malloc(argv)  # XLA_FLAGS: as the parent set them, no tuning of its own
    args = parse_args(argv)
    return worker(args.workloads, args.repeats, args.tiny, args.outputs, args.torch_matmul)
  args = parse_args(argv)
  sets = flag_sets(args.flag_sets)
  env = common.environment(common.setup_threads(), "per worker: " + (
      "glibc defaults" if args.system_malloc else "keep_freed_memory (as main.py)"),
      cpu_tuning="per worker: the flag sets", cpu_tuning_chosen=" ".join(
          runtime.xla_cpu_flags(runtime.cpu_features())))
  env["xla_flags"] = "per worker (flag_sets)"
  report = common.Report(args.out, benchmark="xla_cpu_flags", tiny=args.tiny, flag_sets=sets,
                         workloads=args.workloads, environment=env)
  rounds = {name: {w: [] for w in args.workloads} for name in sets}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for workload in args.workloads:
        for name, flags in sets.items():
          path = Path(tmp) / f"{name}_{workload}_{r}.npz"
          results = run_worker(flags, workload, args, path,
                               torch_matmul=(r == 0 and name == next(iter(sets))))
          rounds[name][workload].append(dict(results=results, outputs_file=str(path)))
          report.header["raw"] = rounds  # every worker's results, as they come
          report.save()
          print(f"round {r} {name}: " + ", ".join(
              f"{e['figure']}{' (torch)' if e.get('framework') else ''} {e['median_s']:.4f}s"
              if "crashed" not in e else f"{workload} CRASHED {e['crashed']}" for e in results)
              + f" load {common.loadavg()[0]:.1f}", file=sys.stderr, flush=True)
      report.results = summarise(rounds, sets)
      report.rows = table(report.results)
      report.header["table_columns"] = ["figure", *(
          ["PyTorch"] if any("PyTorch" in row for row in report.rows) else []), *sets, "load"]
      report.save()
  payload = report.save(done=True)
  print(common.markdown_table(report.rows, columns=payload["table_columns"]))
  return payload


def summarise(rounds: dict, sets: dict) -> list:
  """Per figure and flag set: median over rounds, fusions, max relative output difference."""
  base = next(iter(sets))
  out = []
  for name in sets:
    for workload, runs in rounds[name].items():
      base_runs = rounds[base][workload]
      base_out = (np.load(base_runs[0]["outputs_file"])
                  if Path(base_runs[0]["outputs_file"]).exists() else {})
      ok = [run for run in runs if "crashed" not in run["results"][0]]
      if not ok:
        out.append(dict(flag_set=name, flags=sets[name], workload=workload, figure=None,
                        crashed=runs[0]["results"][0]["crashed"],
                        loadavg=[run["results"][0]["loadavg"] for run in runs]))
        continue
      outputs = np.load(ok[0]["outputs_file"])
      for entry in ok[0]["results"]:
        same = lambda e, entry=entry: (e["figure"], e.get("framework")) == (
            entry["figure"], entry.get("framework"))
        per_round = [e for run in ok for e in run["results"] if same(e)]
        medians = [e["median_s"] for e in per_round]
        row = dict(flag_set=name, flags=sets[name], workload=workload, figure=entry["figure"],
                   framework=entry.get("framework", "jax"), median_s=float(np.median(medians)),
                   round_medians_s=medians, first_s=[e["first_s"] for e in per_round],
                   loadavg=[e["loadavg"] for e in per_round], fusions=entry.get("fusions"),
                   crashed_rounds=len(runs) - len(ok))
        if "gflops_per_s" in entry:
          row["gflops_per_s"] = float(np.median([e["gflops_per_s"] for e in per_round]))
        key = entry["figure"].replace(" ", "_")
        if row["framework"] == "jax" and key in outputs and key in base_out:
          ref = base_out[key].astype(np.float64)
          row["max_rel_vs_" + base] = float(np.abs(outputs[key] - ref).max() / np.abs(ref).max())
        out.append(row)
  return out


def table(results: list) -> list:
  """Markdown rows: one per figure, one column per flag set (time, GFLOP/s, vs the first)."""
  rows, base = [], results[0]["flag_set"]
  figures = {}
  for r in results:
    if r["figure"]:
      figures.setdefault(r["figure"], r["workload"])
  for figure, workload in figures.items():
    row = {"figure": figure}
    ref = next((r for r in results if r["figure"] == figure and r["flag_set"] == base), None)
    for r in results:
      if r["workload"] != workload or (r["figure"] and r["figure"] != figure):
        continue
      column = "PyTorch" if r.get("framework") == "torch" else r["flag_set"]
      if not r["figure"]:
        row[column] = "crashed"
        continue
      text = common.fmt(r["median_s"])
      if "gflops_per_s" in r:
        text += f" ({r['gflops_per_s']:.0f} GFLOP/s)"
      if r["framework"] == "jax" and ref and r is not ref:
        text += f", {ref['median_s'] / r['median_s']:.2f}x"
        err = r.get("max_rel_vs_" + base)
        if err is not None and err > 1e-4:
          text += f", differs by {err:.2g}"
      if r.get("fusions") and r["fusions"]["onednn"]:
        text += f", {r['fusions']['onednn']} oneDNN fusions"
      row[column] = text
    loads = [l[0] for r in results if r["workload"] == workload for l in r["loadavg"]]
    row["load"] = f"{min(loads):.1f}-{max(loads):.1f}"
    rows.append(row)
  return rows


if __name__ == "__main__":
  main()
