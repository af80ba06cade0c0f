"""Shared pieces of the benchmarks: one timing protocol for JAX and PyTorch, environment, output.

Protocol (both frameworks, in one process): each function runs once unmeasured (for JAX that is
the compilation; its time is reported as `first_s`), then the functions of one figure run in turn,
round after round, so that a burst of load from other processes hits both alike; the figure is
the median over rounds. JAX results are waited for with `block_until_ready`, CUDA with
`torch.cuda.synchronize`.
"""
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import torch

from sampot_jax.runtime import cpu as runtime


SYSTEM_MALLOC = "--system-malloc"
SYSTEM_MALLOC_HELP = ("keep glibc's default malloc settings; by default both frameworks run with "
                      "sampot_jax.runtime.cpu.keep_freed_memory(), as main.py does")
CPU_TUNING = "--cpu-tuning"
CPU_TUNING_HELP = ("XLA:CPU flags chosen for this CPU (sampot_jax.runtime.cpu.configure_xla_cpu, as "
                   "main.py does): auto (default) or off; $SAMPOT_XLA_CPU_FLAGS replaces the "
                   "choice, and flags already in XLA_FLAGS win")


def add_runtime_args(parser) -> None:
  """The process-wide settings main.py makes, as benchmark arguments (read before parse_args)."""
  parser.add_argument(SYSTEM_MALLOC, action="store_true", help=SYSTEM_MALLOC_HELP)
  parser.add_argument(CPU_TUNING, choices=runtime.TUNING_MODES, default="auto",
                      help=CPU_TUNING_HELP)


def _cpu_tuning_mode(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith(CPU_TUNING + "="):
      return arg.split("=", 1)[1]
    if arg == CPU_TUNING and i + 1 < len(argv):
      return argv[i + 1]
  return "auto"


def setup_malloc(argv) -> str:
  """Before anything touches JAX (argument defaults do): the allocator main.py runs with."""
  if SYSTEM_MALLOC in argv:
    return f"glibc defaults ({SYSTEM_MALLOC})"
  if runtime.keep_freed_memory():
    return "glibc: freed memory kept for reuse (sampot_jax.runtime.cpu.keep_freed_memory)"
  return "system defaults (keep_freed_memory not available here)"


def setup_runtime(argv) -> dict:
  """Before anything touches JAX: main.py's allocator and XLA:CPU settings; what was set."""
  malloc = setup_malloc(argv)
  mode = _cpu_tuning_mode(argv)
  added = runtime.configure_xla_cpu(mode) if mode in runtime.TUNING_MODES else []
  return dict(malloc=malloc, cpu_tuning=mode, cpu_tuning_added=added)


def start(argv, parse_args):
  """A benchmark script's first steps, in the order they must run.

  argv: the arguments (None: sys.argv[1:]). Returns (args, threads, torch device, environment).
  """
  argv = sys.argv[1:] if argv is None else argv
  settings = setup_runtime(argv)  # before parse_args: its GPU-dependent defaults start JAX
  args = parse_args(argv)
  threads = setup_threads()
  return args, threads, torch_device(), environment(threads, **settings)


def ints(text: str) -> list[int]:
  """"1,8,32" -> [1, 8, 32]; "" -> []."""
  return [int(v) for v in text.split(",") if v]


def setup_threads() -> int:
  """Gives PyTorch the cores XLA's CPU client uses (all of them); returns that number."""
  cores = os.cpu_count() or 1
  torch.set_num_threads(cores)
  return cores


def on_gpu() -> bool:
  return jax.default_backend() == "gpu" and torch.cuda.is_available()


def torch_device() -> torch.device:
  return torch.device("cuda" if on_gpu() else "cpu")


def sync_torch(x=None):
  if torch.cuda.is_available():
    torch.cuda.synchronize()
  return x


def block(x):
  return jax.block_until_ready(x)


def _rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def mem_available_gb() -> float:
  """MemAvailable from /proc/meminfo (Linux), else inf."""
  try:
    for line in Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return float("inf")


def reset_peak_memory():
  if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
  # XLA exposes no reset; its peak is read as a running maximum (see peak_memory).


def peak_memory() -> dict:
  """Peak device memory so far (GiB): JAX (running max of the process) and torch (since reset)."""
  out = {}
  if jax.default_backend() != "cpu":
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      out["jax_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
  if torch.cuda.is_available():
    out["torch_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
  if not out:
    out["process_max_rss_gib"] = _rss_gb()
  return out


def measure(fns: dict[str, Callable[[], object]], repeats: int, budget_s: float = float("inf"),
            warmed: tuple[str, ...] = ()) -> dict:
  """Times each zero-argument function (it must wait for its own result).

  Each function runs once unmeasured first (`first_s`), except those named in `warmed` (already
  run, e.g. by `best_torch_threads` on a shorter input). Returns {name: {"median_s", "min_s",
  "times_s"[, "first_s"]}}; rounds stop once the measured time exceeds `budget_s` (at least one).
  """
  out = {name: {"times_s": []} for name in fns}
  for name, fn in fns.items():
    if name not in warmed:
      start = time.perf_counter()
      fn()
      out[name]["first_s"] = time.perf_counter() - start
  spent = 0.0
  for _ in range(max(repeats, 1)):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      elapsed = time.perf_counter() - start
      out[name]["times_s"].append(elapsed)
      spent += elapsed
    if spent > budget_s:
      break
  for stats in out.values():
    stats["median_s"] = float(np.median(stats["times_s"]))
    stats["min_s"] = float(np.min(stats["times_s"]))
  return out


def with_threads(fn: Callable[[], object], threads: int) -> Callable[[], object]:
  """fn run with torch.set_num_threads(threads), restoring the count after."""
  def run():
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
      return fn()
    finally:
      torch.set_num_threads(before)
  return run


def best_torch_threads(fn: Callable[[], object], cores: int, tries: int = 3) -> tuple[int, dict]:
  """The faster of 1 and `cores` PyTorch threads for `fn` (median of `tries` after a warm-up).

  On a shared machine, OpenMP's parallel regions wait for a descheduled thread at every small op
  (a 64x64 matmul: 11 us on one thread, 15 ms on two under load 3); for PyTorch's small-op
  workloads (decoder, SAMPOT step) one thread is then faster. PyTorch gets the better count.
  """
  if cores <= 1 or on_gpu():
    fn()  # still a warm-up, which callers count on
    return cores, {}
  probe = {}
  for threads in (1, cores):
    run = with_threads(fn, threads)
    run()
    times = []
    for _ in range(tries):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    probe[threads] = float(np.median(times))
  return min(probe, key=probe.get), {str(k): v for k, v in probe.items()}


def cpu_record() -> dict:
  """The CPU model and the ISA features the XLA:CPU choice looks at (from /proc/cpuinfo)."""
  features = runtime.cpu_features()
  return dict(cpu=features.model_name or platform.processor(), cpu_vendor=features.vendor,
              cpu_family=features.family, cpu_model=features.model, cpu_isa=features.isa,
              cpu_kind=features.kind)


def environment(threads: int, malloc: str, **settings) -> dict:
  """Machine, versions, date and load, for the JSON."""
  import flax  # pylint: disable=g-import-not-at-top
  import segment_anything  # pylint: disable=g-import-not-at-top,unused-import
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
  except OSError:
    commit = ""
  env = dict(
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      host=platform.node(), **cpu_record(), cpu_count=os.cpu_count(), jax=jax.__version__,
      jax_backend=jax.default_backend(), jax_devices=[str(d) for d in jax.devices()],
      flax=flax.__version__, torch=torch.__version__, segment_anything="1.0",
      python=platform.python_version(), commit=commit, loadavg_start=os.getloadavg(),
      mem_available_gib=mem_available_gb(),
      threads=(f"torch.set_num_threads({threads}); XLA CPU runs its intra-op pool on all "
               f"{os.cpu_count()} cores (default); both use the same {threads} cores"),
      xla_flags=os.environ.get("XLA_FLAGS", ""), malloc=malloc, **settings)
  if torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name(0)
  return env


def ratio(torch_s, jax_s):
  """Speed-up of JAX over PyTorch (> 1: JAX faster), None where either is missing."""
  if torch_s is None or jax_s is None or jax_s <= 0:
    return None
  return torch_s / jax_s


def fmt(x, unit: str = "s") -> str:
  if x is None:
    return "—"
  if unit == "s":
    if x >= 1:
      return f"{x:.2f} s"
    return f"{x * 1e3:.2f} ms" if x >= 1e-3 else f"{x * 1e6:.0f} µs"
  return f"{x:.3g}"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
  """Rows of {figure, unit, jax, torch, note} (seconds unless `unit`) -> a markdown table.

  With `columns`: a plain table of those keys (values already text), e.g. one column per setting.
  """
  if columns:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "—")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
  lines = ["| figure | JAX | official PyTorch | PyTorch / JAX | note |", "|---|---|---|---|---|"]
  for row in rows:
    unit = row.get("unit", "s")
    r = row.get("ratio", ratio(row.get("torch"), row.get("jax")) if unit == "s" else None)
    lines.append(f"| {row['figure']} | {fmt(row.get('jax'), unit)} | "
                 f"{fmt(row.get('torch'), unit)} | {'—' if r is None else f'{r:.2f}x'} | "
                 f"{row.get('note', '')} |")
  return "\n".join(lines)


def write_json(path, payload: dict) -> None:
  """Writes to a temporary name, then renames (never a half-written file)."""
  if not path:
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(payload, indent=2, default=float))
  tmp.replace(path)


def loadavg() -> list:
  return list(os.getloadavg())


class Report:
  """Rows of the markdown table and the JSON results, written again after every figure (a run
  cut short by a time limit still leaves what it measured)."""

  def __init__(self, path, **header):
    self.path, self.header = path, header
    self.rows, self.results = [], []

  def add(self, result: dict | None = None, *rows: dict) -> None:
    if result is not None:
      self.results.append(result)
    self.rows.extend(rows)
    self.save()

  def save(self, done: bool = False) -> dict:
    payload = dict(self.header, loadavg_end=loadavg(), complete=done, results=self.results,
                   table=self.rows)
    write_json(self.path, payload)
    return payload
