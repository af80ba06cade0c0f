"""keep_freed_memory: a jitted function's scratch memory is reused, not faulted in every call."""
import subprocess
import sys
import textwrap

import pytest

# A function whose XLA scratch buffer (16 MB intermediates) is above glibc's mmap threshold;
# prints the median minor page faults per call once warm.
PROGRAM = textwrap.dedent("""
    import resource, statistics, sys
    if sys.argv[1] == "keep":
      from sampot_jax import runtime
      assert runtime.keep_freed_memory()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: jnp.tanh(jnp.sin(x) @ x.T).sum() + jnp.cos(x @ x.T).sum())
    x = jnp.ones((2048, 2048)) / 2048
    faults = []
    for _ in range(25):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(f(x))
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # The heap settles within about ten calls (threads allocate in varying order at first).
    print(statistics.median(faults[10:]))
""")


def faults_per_call(mode: str) -> float:
  out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                       check=True)
  return float(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_stops_page_faults_per_call():
  default, kept = faults_per_call("default"), faults_per_call("keep")
  print(f"minor page faults per call: glibc defaults {default:.0f}, kept {kept:.0f}")
  # 16 MB intermediates: >= 4096 faults per call each when mapped afresh; reused pages fault 0.
  assert default > 4000, default
  assert kept < 200, kept
