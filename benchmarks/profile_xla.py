"""Where a jitted function's time goes on XLA:CPU: its ops' times from a jax.profiler trace.

    python -m benchmarks.profile_xla --model lite_medsam            # TinyViT encoder, 256 px
    python -m benchmarks.profile_xla --model lite_medsam --tiny     # seconds (smoke)

The function runs once to compile, then `--calls` times under `jax.profiler.trace`; the trace's
host plane is read back with `jax.profiler.ProfileData`, and the events of XLA's executions
(thunks: fusions, library calls, copies) are summed per op name and per op kind (the name
without its numeric suffix), with the HLO op each fusion is built around. Times are wall time
on the threads that ran them, so with two cores the sum can exceed the elapsed time.
"""
import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

# Events of the host plane that are not XLA ops.
_NOT_OPS = re.compile(r"^(PjitFunction|TfrtCpu|Thunk|XlaModule|ThunkExecutor|end_to_end|"
                      r"\$|jit_|PjRt|ExecuteHelper|Execute|cpu_executable|.*::)")


def op_times(fn, args, calls: int = 3) -> tuple[dict, float]:
  """{op name: seconds per call} of a jitted fn under the profiler, and the elapsed time."""
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    start = time.perf_counter()
    for _ in range(calls):
      jax.block_until_ready(fn(*args))
    elapsed = (time.perf_counter() - start) / calls
    jax.profiler.stop_trace()
    path = next(Path(tmp).rglob("*.xplane.pb"))
    data = jax.profiler.ProfileData.from_file(str(path))
  totals = collections.Counter()
  for plane in data.planes:
    if not plane.name.startswith("/host:"):
      continue
    for line in plane.lines:
      for event in line.events:
        if _NOT_OPS.match(event.name):
          continue
        totals[event.name] += event.duration_ns * 1e-9 / calls
  return dict(totals), elapsed


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) .*?metadata=\{op_name=\"([^\"]+)\"")


def describe_ops(compiled_text: str) -> dict:
  """{instruction name: "shape  jax op path"} of every computation's instructions (a loop's
  body too: a scan's ops live there)."""
  out = {}
  for line in compiled_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      name, shape, op = m.groups()
      op = re.sub(r"^jit\([^)]*\)/", "", op)
      out[name] = f"{shape}  {op[-90:]}"
  return out


def kind(name: str) -> str:
  """"loop_add_fusion.12" -> "loop_add_fusion"."""
  return re.sub(r"(\.\d+)+$", "", name)


def summarise(times: dict, top: int = 25, described: dict | None = None) -> str:
  total = sum(times.values())
  by_kind = collections.Counter()
  for name, t in times.items():
    by_kind[kind(name)] += t
  lines = [f"sum of op times {total * 1e3:.1f} ms per call", "", "by kind:"]
  lines += [f"  {t * 1e3:9.2f} ms {100 * t / total:5.1f} %  {k}"
            for k, t in by_kind.most_common(top)]
  lines += ["", "by op:"]
  described = described or {}
  lines += [f"  {t * 1e3:9.2f} ms {100 * t / total:5.1f} %  {n}  {described.get(n, '')}"
            for n, t in collections.Counter(times).most_common(top)]
  return "\n".join(lines)


def encoder_case(variant: str, tiny: bool, batch: int):
  """A jitted encoder of `variant` with random weights and its pixels."""
  from benchmarks import bench_sam, bench_xla_cpu  # pylint: disable=g-import-not-at-top
  from sampot_jax.sam import model as sam_model  # pylint: disable=g-import-not-at-top
  config = sam_model.sam_config(variant, **(bench_sam.tiny_overrides(variant) if tiny else {}))
  params = bench_xla_cpu._random_params(config)  # pylint: disable=protected-access
  x = jnp.asarray(np.random.default_rng(0).uniform(
      -2, 2, (batch, config.img_size, config.img_size, 3)), jnp.float32)
  frozen = sam_model._frozen(config)  # pylint: disable=protected-access
  return jax.jit(lambda p, v: sam_model.encode(p, v, frozen)), (params, x)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_runtime_args(p)
  p.add_argument("--model", default="lite_medsam", help="a SAM variant: its image encoder")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--calls", type=int, default=3)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--tiny", action="store_true")
  argv = sys.argv[1:] if argv is None else argv
  settings = common.setup_runtime(argv)
  args = p.parse_args(argv)
  fn, fn_args = encoder_case(args.model, args.tiny, args.batch)
  load = common.loadavg()
  times, elapsed = op_times(fn, fn_args, args.calls)
  print(f"{args.model} encoder, batch {args.batch}: {elapsed * 1e3:.1f} ms per call; load "
        f"{load[0]:.1f}; {common.cpu_record()['cpu']}; {settings}")
  print(summarise(times, args.top, describe_ops(fn.lower(*fn_args).compile().as_text())))
  return times, elapsed


if __name__ == "__main__":
  main()
