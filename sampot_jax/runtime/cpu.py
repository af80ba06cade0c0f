"""Process-wide settings that have to be made before JAX's first computation.

- `keep_freed_memory()`: glibc malloc keeps freed memory for reuse (XLA:CPU's scratch buffers).
- `configure_xla_cpu()`: XLA:CPU flags chosen for the CPU found in /proc/cpuinfo
  (`cpu_features()`, `xla_cpu_flags()`), added to XLA_FLAGS; off with mode "off", replaced by
  $SAMPOT_XLA_CPU_FLAGS, never overriding a flag the user set in XLA_FLAGS.
"""
import ctypes
import ctypes.util
import dataclasses
import functools
import json
import logging
import mmap
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from sampot_jax import errors

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


# --- XLA:CPU flags chosen per CPU -------------------------------------------------------------

# The ISA features the choice (and the benchmarks' records) look at, as /proc/cpuinfo names them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
ENV_VAR = "SAMPOT_XLA_CPU_FLAGS"  # set (even empty): these flags instead of the automatic choice
TUNING_MODES = ("auto", "off")

# XLA's oneDNN library path for dots. In jaxlib 0.10.2 both flags are needed: the fusion type
# alone leaves the dots to YNNPACK (XLA's default here; checked in the compiled HLO).
ONEDNN_DOT = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=dot")


# The self-check of a flag set (verify_xla_flags): the dot patterns of SAM, LiteMedSAM and the
# regressor, each compared with NumPy in float64. oneDNN's dot fusion in jaxlib 0.10.2 gets
# `(a @ b) * 0.25` wrong (max error 190 on values of 3.4) and aborts the process compiling
# `(a * 0.25) @ b` ("partition compile failed", SIGILL), on the AMD EPYC measured.
_SELF_CHECK = r"""
import jax, jax.numpy as jnp, numpy as np
rng = np.random.default_rng(0)
def r(*shape):
  return rng.standard_normal(shape).astype(np.float32)
a, b, c, s = r(96, 48), r(48, 40), r(96, 40), r(48)
q, k, v, bias = r(3, 49, 16), r(3, 49, 16), r(3, 49, 16), r(3, 49, 49)
cases = {
    "dot": (lambda a, b: a @ b, (a, b), lambda a, b: a @ b),
    "dot_then_scale": (lambda a, b: (a @ b) * 0.25, (a, b), lambda a, b: (a @ b) * 0.25),
    "scale_then_dot": (lambda a, b: (a * 0.25) @ b, (a, b), lambda a, b: (a * 0.25) @ b),
    "folded_kernel": (lambda a, b, s: a @ (b * s[:, None]), (a, b, s),
                      lambda a, b, s: a @ (b * s[:, None])),
    "dot_bias_gelu": (lambda a, b, c: jax.nn.gelu(a @ b + c[0], approximate=False), (a, b, c),
                      None),
    "attention": (lambda q, k, v, bias: jnp.einsum("hqk,hkd->hqd", jax.nn.softmax(
                      jnp.einsum("hqd,hkd->hqk", q, k) * 0.25 + bias, axis=-1), v),
                  (q, k, v, bias), None),
}
def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)
from math import erf
gelu = np.vectorize(lambda x: 0.5 * x * (1 + erf(x / 2 ** 0.5)))
refs = {"dot_bias_gelu": lambda a, b, c: gelu(a @ b + c[0]),
        "attention": lambda q, k, v, bias: np.einsum("hqk,hkd->hqd", softmax(
            np.einsum("hqd,hkd->hqk", q, k) * 0.25 + bias), v)}
worst = {}
for name, (fn, args, ref) in cases.items():
  ref = ref or refs[name]
  expected = ref(*[x.astype(np.float64) for x in args])
  for dtype, tol in ((jnp.float32, 1e-4), (jnp.bfloat16, 0.1)):
    got = np.asarray(jax.jit(fn)(*[jnp.asarray(x, dtype) for x in args]), np.float64)
    err = float(np.abs(got - expected).max() / np.abs(expected).max())
    worst[f"{name}/{jnp.dtype(dtype).name}"] = err
    if not err < tol:
      print(f"MISMATCH {name} {jnp.dtype(dtype).name} {err:.3g}")
print("OK" if all(e < (1e-4 if k.endswith("float32") else 0.1) for k, e in worst.items())
      else "FAILED")
"""


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
  """What /proc/cpuinfo says about the first processor (the others are the same part)."""
  vendor: str = ""  # "GenuineIntel", "AuthenticAMD", "" when unknown
  model_name: str = ""
  family: int | None = None
  model: int | None = None
  flags: frozenset = frozenset()

  def has(self, *names: str) -> bool:
    return all(name in self.flags for name in names)

  @property
  def isa(self) -> dict:
    return {name: name in self.flags for name in ISA_FLAGS}

  @property
  def kind(self) -> str:
    """The CPU family the XLA flags are chosen for (CPU_FAMILIES)."""
    if self.has("amx_bf16", "amx_tile"):
      return "x86_amx"
    if self.has("avx512f"):
      return "x86_avx512"
    if self.has("avx2"):
      return "x86_avx2"
    return "other"

  def describe(self) -> str:
    isa = ", ".join(name for name, present in self.isa.items() if present) or "none of " + "/".join(
        ISA_FLAGS)
    where = f"{self.vendor} family {self.family} model {self.model}" if self.vendor else "unknown"
    return f"{self.model_name or 'unknown CPU'} ({where}; {isa})"


# kind -> (XLA flags, why). Evidence: docs/benchmarks.md, "XLA:CPU flags per CPU". Flags are set
# only after they pass verify_xla_flags on the machine.
CPU_FAMILIES = {
    "x86_amx": (ONEDNN_DOT,
                "AMX: oneDNN dots, as the issue measured on Sapphire Rapids (2048 matmul, float32 "
                "182 vs 166 GFLOP/s, bfloat16 633 vs 394; not measured by this project), if they "
                "pass the self-check (with jaxlib 0.10.2 they fail it on the AMD EPYC measured)"),
    "x86_avx512": ((), "AVX-512 without AMX: XLA's defaults; no measurement supports a change"),
    "x86_avx2": ((), "AVX2 (AMD EPYC Zen 3 measured): XLA's defaults; no flag was faster, and "
                     "oneDNN dots compute wrong results or abort here"),
    "other": ((), "XLA's defaults"),
}


def cpu_features(cpuinfo: str | None = None) -> CpuFeatures:
  """Parses /proc/cpuinfo (or the given text) into CpuFeatures; empty ones if unreadable."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        cpuinfo = f.read()
    except OSError:
      return CpuFeatures(model_name=platform.processor())
  fields = {}
  for line in cpuinfo.splitlines():
    if not line.strip():
      if fields:
        break  # the first processor only
      continue
    key, _, value = line.partition(":")
    fields.setdefault(key.strip().lower(), value.strip())

  def number(key):
    try:
      return int(fields[key], 0)
    except (KeyError, ValueError):
      return None

  return CpuFeatures(vendor=fields.get("vendor_id", ""), model_name=fields.get("model name", ""),
                     family=number("cpu family"), model=number("model"),
                     flags=frozenset(fields.get("flags", fields.get("features", "")).split()))


def xla_cpu_flags(features: CpuFeatures) -> list[str]:
  """The XLA:CPU flags chosen for this CPU (CPU_FAMILIES)."""
  return list(CPU_FAMILIES[features.kind][0])


def flag_name(flag: str) -> str:
  """"--xla_cpu_use_onednn=true" -> "xla_cpu_use_onednn"."""
  return flag.lstrip("-").split("=", 1)[0]


@functools.lru_cache(maxsize=None)
def xla_flag_exists(name: str) -> bool:
  """Whether the installed jaxlib registers the XLA flag `name`.

  An unknown flag in XLA_FLAGS aborts the process when JAX starts, and XLA renames and drops
  experimental flags between releases, so flags are checked before they are set: the flag names
  are null-terminated strings in jaxlib's shared libraries (0.4 s to scan 350 MB, once).
  """
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  needle = b"\0" + name.encode() + b"\0"
  libraries = sorted(Path(jaxlib.__file__).parent.glob("*.so"), key=lambda p: -p.stat().st_size)
  for path in libraries[:3]:
    try:
      with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m.find(needle) >= 0:
          return True
    except (OSError, ValueError):
      continue
  return False


def _jax_started() -> bool:
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def _cache_file() -> Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "sampot_jax" / "xla_cpu_flags_checked.json"


def verify_xla_flags(flags: Sequence[str], timeout_s: float = 300.0) -> tuple[bool, str]:
  """Whether JAX computes the self-check's dot patterns right under `flags` (float32 within
  1e-4, bfloat16 within 0.1 of NumPy float64), in a subprocess (a flag that aborts XLA only
  takes that down). About 4 s; the verdict is cached per jaxlib version, CPU and flags in
  ~/.cache/sampot_jax. Returns (ok, what happened)."""
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    version = jaxlib.__version__
  except (ImportError, AttributeError):
    version = "?"
  key = f"jaxlib {version} | {cpu_features().model_name} | {' '.join(flags)}"
  cache = _cache_file()
  try:
    known = json.loads(cache.read_text())
  except (OSError, ValueError):
    known = {}
  if key in known:
    return known[key]["ok"], known[key]["detail"] + " (cached)"
  env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
  env.pop(ENV_VAR, None)
  try:
    proc = subprocess.run([sys.executable, "-c", _SELF_CHECK], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    ok = proc.returncode == 0 and lines[-1:] == ["OK"]
    detail = ("passed" if ok else f"failed (exit status {proc.returncode}): " + "; ".join(
        lines[-3:] + proc.stderr.strip().splitlines()[-1:]))
  except (OSError, subprocess.TimeoutExpired) as e:
    return False, f"could not run: {e}"  # not cached
  known[key] = {"ok": ok, "detail": detail}
  try:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(cache)
  except OSError:
    pass
  return ok, detail


def configure_xla_cpu(mode: str = "auto", environ=None, features: CpuFeatures | None = None,
                      exists=xla_flag_exists, verify=verify_xla_flags) -> list[str]:
  """Adds the XLA:CPU flags chosen for this CPU to XLA_FLAGS; returns the flags added.

  mode "auto": CPU_FAMILIES[features.kind], set only if they pass `verify` (the self-check,
  run once per machine and jaxlib); "off": nothing. The environment variable
  SAMPOT_XLA_CPU_FLAGS, when set, replaces the automatic choice (space-separated flags, used as
  given, without the self-check; empty: none). A flag whose name is already in XLA_FLAGS is left
  as the user set it, and a flag that the installed jaxlib does not know is skipped (it would
  abort JAX). Must run before JAX's first computation; afterwards it changes nothing and warns.
  The choice is logged.
  """
  if mode not in TUNING_MODES:
    raise errors.ConfigError(f"cpu tuning mode {mode!r} is not one of {TUNING_MODES}")
  environ = os.environ if environ is None else environ
  features = cpu_features() if features is None else features
  if mode == "off":
    logging.info("XLA:CPU tuning off; XLA_FLAGS=%r", environ.get("XLA_FLAGS", ""))
    return []
  explicit = ENV_VAR in environ
  if explicit:
    chosen, why = environ[ENV_VAR].split(), f"from ${ENV_VAR}"
  else:
    chosen, why = xla_cpu_flags(features), CPU_FAMILIES[features.kind][1]
  user = environ.get("XLA_FLAGS", "")
  user_names = {flag_name(f) for f in user.split()}
  added, skipped = [], []
  for flag in chosen:
    name = flag_name(flag)
    if name in user_names:
      skipped.append(f"{flag} (XLA_FLAGS sets {name})")
    elif not exists(name):
      skipped.append(f"{flag} (unknown to this jaxlib)")
    else:
      added.append(flag)
  if added and _jax_started():
    logging.warning("configure_xla_cpu() called after JAX started: XLA_FLAGS are read once, so "
                    "%s would not apply; call it before the first JAX computation.", added)
    return []
  if added and not explicit:
    ok, detail = verify(added)
    if not ok:
      skipped += [f"{flag} (self-check {detail})" for flag in added]
      added = []
  if added:
    environ["XLA_FLAGS"] = " ".join([user] + added).strip()
  logging.info("XLA:CPU tuning for %s: %s. Added %s%s; XLA_FLAGS=%r", features.describe(), why,
               added or "nothing", f", skipped {skipped}" if skipped else "",
               environ.get("XLA_FLAGS", ""))
  return added


def main() -> None:
  """`python -m sampot_jax.runtime`: this CPU, the flags chosen for it, and their self-check."""
  features = cpu_features()
  flags = xla_cpu_flags(features)
  print(f"CPU: {features.describe()}\nfamily: {features.kind}: {CPU_FAMILIES[features.kind][1]}")
  print(f"chosen flags: {' '.join(flags) or '(none)'}")
  for flag in flags:
    print(f"  {flag_name(flag)}: {'known' if xla_flag_exists(flag_name(flag)) else 'UNKNOWN'} "
          "to this jaxlib")
  if flags:
    print("self-check: %s" % (verify_xla_flags(flags)[1],))
  env = {k: v for k, v in os.environ.items() if k in ("XLA_FLAGS", ENV_VAR)}
  configure_xla_cpu("auto", env, features)
  print(f"XLA_FLAGS with the tuning: {env.get('XLA_FLAGS', '')!r}")


if __name__ == "__main__":
  main()
