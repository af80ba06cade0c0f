"""Markdown for docs/benchmarks.md from the benchmarks' JSON files.

    python -m benchmarks.report benchmarks/results/sam_cpu.json benchmarks/results/sampot_cpu.json

Each file's heading line names the machine: the CPU model with the ISA features the XLA:CPU
flags are chosen by (avx2, avx512f, avx512_bf16, amx_bf16, amx_tile), or the GPU. Figures of
different CPU families belong in different tables of docs/benchmarks.md.
"""
import json
import sys

from benchmarks import common


def isa_text(env: dict) -> str:
  """"avx2; no avx512f, avx512_bf16, amx_bf16, amx_tile" (older files: not recorded)."""
  isa = env.get("cpu_isa")
  if not isa:
    return "ISA flags not recorded"
  have = [k for k, v in isa.items() if v]
  lacks = [k for k, v in isa.items() if not v]
  return "; ".join(filter(None, [", ".join(have), "no " + ", ".join(lacks) if lacks else ""]))


def describe(payload: dict) -> str:
  env = payload["environment"]
  device = env.get("gpu") or f"{env['cpu']} ({env['cpu_count']} cores; {isa_text(env)})"
  tuning = env.get("cpu_tuning")
  name = " ".join(filter(None, [payload["benchmark"], payload.get("variant"),
                                 payload.get("prompt") and f"({payload['prompt']} prompts)"]))
  return (f"{name}: {env['date']}, {device}, JAX {env['jax']} "
          f"({env['jax_backend']}), flax {env['flax']}, torch {env['torch']}, "
          f"segment-anything {env['segment_anything']}, commit {env['commit']}; "
          + (f"XLA:CPU tuning {tuning}, XLA_FLAGS {env.get('xla_flags')!r}; " if tuning else "")
          + f"load average {env['loadavg_start'][0]:.1f} at start, "
          f"{payload['loadavg_end'][0]:.1f} at end"
          + ("" if payload.get("complete") else " (INCOMPLETE run)"))


def main(paths):
  for path in paths:
    payload = json.loads(open(path).read())
    print(f"{describe(payload)}\n")
    print(common.markdown_table(payload["table"], columns=payload.get("table_columns")))
    print()


if __name__ == "__main__":
  main(sys.argv[1:])
