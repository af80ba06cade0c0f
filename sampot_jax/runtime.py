"""Process-wide settings that have to be made before JAX's first computation."""
import ctypes
import ctypes.util
import logging
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8


def keep_freed_memory() -> bool:
  """Makes glibc malloc keep freed memory for reuse instead of handing it back to the kernel.

  XLA:CPU mallocs the scratch buffer of every execution from one of its worker threads. glibc
  serves blocks that large with a fresh mmap and unmaps them on free, so every call faults its
  scratch memory in again (the measured cost is in docs/benchmarks.md). With a single arena, no
  mmap and no trimming, the second call reuses the first call's pages.

  The cost: memory freed by the process is kept by it (its footprint stays at its peak), and all
  threads share one malloc arena. Effective only for threads that have not allocated yet, so
  call it before the first JAX computation (main.py does). Linux with glibc only; elsewhere a
  no-op. Returns whether the settings were applied.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl and other C libraries have no mallopt
    return False
  if "jax" in sys.modules:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    if xla_bridge.backends_are_initialized():
      logging.warning("keep_freed_memory() called after JAX started: XLA's worker threads "
                      "already have their own malloc arenas, so most of the effect is lost. "
                      "Call it before the first JAX computation.")
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1),
              (_M_TOP_PAD, 64 << 20))
  return all(mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in settings)
