"""Markdown for docs/benchmarks.md from the benchmarks' JSON files.

    python -m benchmarks.report benchmarks/results/sam_cpu.json benchmarks/results/sampot_cpu.json
"""
import json
import sys

from benchmarks import common


def describe(payload: dict) -> str:
  env = payload["environment"]
  device = env.get("gpu") or f"{env['cpu']} ({env['cpu_count']} cores)"
  return (f"{payload['benchmark']}: {env['date']}, {device}, JAX {env['jax']} "
          f"({env['jax_backend']}), flax {env['flax']}, torch {env['torch']}, "
          f"segment-anything {env['segment_anything']}, commit {env['commit']}; load average "
          f"{env['loadavg_start'][0]:.1f} at start, {payload['loadavg_end'][0]:.1f} at end"
          + ("" if payload.get("complete") else " (INCOMPLETE run)"))


def main(paths):
  for path in paths:
    payload = json.loads(open(path).read())
    print(f"{describe(payload)}\n")
    print(common.markdown_table(payload["table"]))
    print()


if __name__ == "__main__":
  main(sys.argv[1:])
