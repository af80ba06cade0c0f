"""sampot_jax.runtime.cpu: keep_freed_memory (a jitted function's scratch memory is reused, not faulted
in every call) and the XLA:CPU flags chosen per CPU (fake /proc/cpuinfo texts of AMD and Intel
parts, the override, user XLA_FLAGS winning; subprocesses for what happens when JAX starts).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from sampot_jax.runtime import cpu as runtime

# A function whose XLA scratch buffer (16 MB intermediates) is above glibc's mmap threshold;
# prints the median minor page faults per call once warm.
PROGRAM = textwrap.dedent("""
    import resource, statistics, sys
    if sys.argv[1] == "keep":
      from sampot_jax.runtime import cpu as runtime
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
@pytest.mark.optimized  # the allocations of the program users run
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_stops_page_faults_per_call():
  default, kept = faults_per_call("default"), faults_per_call("keep")
  print(f"minor page faults per call: glibc defaults {default:.0f}, kept {kept:.0f}")
  # 16 MB intermediates: >= 4096 faults per call each when mapped afresh; reused pages fault 0.
  assert default > 4000, default
  assert kept < 200, kept


# --- XLA:CPU flags per CPU ---------------------------------------------------------------------

def cpuinfo(vendor, model_name, family, model, flags, processors=2):
  """A /proc/cpuinfo text of `processors` identical processors."""
  block = (f"processor\t: {{i}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: "
           f"{model}\nmodel name\t: {model_name}\nflags\t\t: {flags}\n\n")
  return "".join(block.format(i=i) for i in range(processors))


BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma f16c bmi1 bmi2"
AMD_ZEN3 = cpuinfo("AuthenticAMD", "AMD EPYC", 25, 1, BASE + " avx2 sha_ni")
AMD_ZEN4 = cpuinfo("AuthenticAMD", "AMD EPYC 9554 64-Core Processor", 25, 17,
                   BASE + " avx2 avx512f avx512bw avx512_bf16")
INTEL_ICX = cpuinfo("GenuineIntel", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 6, 106,
                    BASE + " avx2 avx512f avx512bw avx512vl avx512_vnni")
INTEL_SPR = cpuinfo("GenuineIntel", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", 6, 143,
                    BASE + " avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile "
                    "amx_int8")
ARM = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes sve\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize("text, kind, isa", [
    (AMD_ZEN3, "x86_avx2", {"avx2"}),
    (AMD_ZEN4, "x86_avx512", {"avx2", "avx512f", "avx512_bf16"}),
    (INTEL_ICX, "x86_avx512", {"avx2", "avx512f"}),
    (INTEL_SPR, "x86_amx", {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
    (ARM, "other", set()),
    ("", "other", set()),
], ids=["amd_zen3", "amd_zen4", "intel_icelake", "intel_sapphire_rapids", "arm", "empty"])
def test_cpu_features_and_family(text, kind, isa):
  features = runtime.cpu_features(text)
  assert features.kind == kind
  assert {name for name, present in features.isa.items() if present} == isa
  assert set(features.isa) == set(runtime.ISA_FLAGS)
  expected = runtime.ONEDNN_DOT if kind == "x86_amx" else ()
  assert runtime.xla_cpu_flags(features) == list(expected)
  assert features.describe()  # never raises, whatever is missing


def test_cpu_features_reads_the_first_processor():
  features = runtime.cpu_features(INTEL_SPR)
  assert features.vendor == "GenuineIntel" and (features.family, features.model) == (6, 143)
  assert features.model_name.startswith("Intel(R) Xeon(R) Platinum 8481C")
  assert "amx_tile" in features.flags and "processor" not in features.flags


def test_cpu_features_of_this_machine():
  features = runtime.cpu_features()  # the real /proc/cpuinfo (or an empty record elsewhere)
  assert features.kind in runtime.CPU_FAMILIES


def configure(text, environ, verdict=(True, "passed"), known=lambda name: True, mode="auto"):
  """configure_xla_cpu on a fake CPU with fake flag checks; returns (added, calls to verify)."""
  calls = []

  def verify(flags):
    calls.append(list(flags))
    return verdict

  added = runtime.configure_xla_cpu(mode, environ, runtime.cpu_features(text), exists=known,
                                    verify=verify)
  return added, calls


@pytest.fixture
def jax_not_started(monkeypatch):
  monkeypatch.setattr(runtime, "_jax_started", lambda: False)


def test_amx_gets_onednn_dots_when_they_pass_the_self_check(jax_not_started):
  env = {}
  added, calls = configure(INTEL_SPR, env)
  assert added == list(runtime.ONEDNN_DOT) and calls == [list(runtime.ONEDNN_DOT)]
  assert env["XLA_FLAGS"] == " ".join(runtime.ONEDNN_DOT)


def test_amx_keeps_defaults_when_the_self_check_fails(jax_not_started):
  env = {}
  added, _ = configure(INTEL_SPR, env, verdict=(False, "failed (exit status -4)"))
  assert added == [] and "XLA_FLAGS" not in env


@pytest.mark.parametrize("text", [AMD_ZEN3, AMD_ZEN4, INTEL_ICX, ARM])
def test_cpus_without_amx_keep_xla_defaults(text, jax_not_started):
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  added, calls = configure(text, env)
  assert added == [] and calls == [] and env == {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}


def test_off_adds_nothing(jax_not_started):
  env = {runtime.ENV_VAR: "--xla_cpu_enable_fast_math=true"}
  added, calls = configure(INTEL_SPR, env, mode="off")
  assert added == [] and calls == [] and "XLA_FLAGS" not in env
  with pytest.raises(ValueError, match="auto"):
    runtime.configure_xla_cpu("on", {})


def test_environment_variable_replaces_the_choice(jax_not_started):
  env = {runtime.ENV_VAR: "--xla_cpu_enable_fast_math=true  --xla_cpu_use_onednn=true"}
  added, calls = configure(AMD_ZEN3, env)
  assert added == ["--xla_cpu_enable_fast_math=true", "--xla_cpu_use_onednn=true"]
  assert calls == []  # the user's explicit flags are not second-guessed
  assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=true --xla_cpu_use_onednn=true"
  env = {runtime.ENV_VAR: ""}  # set but empty: no flags, even on an AMX CPU
  assert configure(INTEL_SPR, env) == ([], []) and "XLA_FLAGS" not in env


def test_flags_in_xla_flags_win(jax_not_started):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_use_onednn=false"}
  added, _ = configure(INTEL_SPR, env)
  assert added == ["--xla_cpu_experimental_onednn_fusion_type=dot"]
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                              "--xla_cpu_use_onednn=false "
                              "--xla_cpu_experimental_onednn_fusion_type=dot")
  env = {"XLA_FLAGS": "--xla_cpu_use_onednn --xla_cpu_experimental_onednn_fusion_type=eltwise"}
  assert configure(INTEL_SPR, env) == ([], [])
  assert env["XLA_FLAGS"] == "--xla_cpu_use_onednn --xla_cpu_experimental_onednn_fusion_type=eltwise"


def test_flags_unknown_to_jaxlib_are_skipped(jax_not_started):
  env = {}
  added, _ = configure(INTEL_SPR, env, known=lambda name: name != "xla_cpu_use_onednn")
  assert added == ["--xla_cpu_experimental_onednn_fusion_type=dot"]


def test_too_late_once_jax_started(monkeypatch, caplog):
  monkeypatch.setattr(runtime, "_jax_started", lambda: True)
  env = {}
  assert configure(INTEL_SPR, env) == ([], [])
  assert "XLA_FLAGS" not in env and "after JAX started" in caplog.text


def test_flag_existence_in_the_installed_jaxlib():
  assert runtime.xla_flag_exists("xla_cpu_use_onednn")
  assert runtime.xla_flag_exists("xla_cpu_experimental_onednn_fusion_type")
  assert not runtime.xla_flag_exists("xla_cpu_no_such_flag_anywhere")
  assert runtime.flag_name("--xla_cpu_use_onednn=true") == "xla_cpu_use_onednn"


# Subprocesses: XLA_FLAGS are read once per process, when JAX starts.
APPLIED = textwrap.dedent("""
    from sampot_jax.runtime import cpu as runtime
    runtime.configure_xla_cpu("auto")
    import jax, jax.numpy as jnp
    f = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile()
    print("onednn" if '"kind":"__onednn_fusion"' in f.as_text() else "default")
""")


def run_applied(env_extra: dict) -> str:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.ENV_VAR)}
  out = subprocess.run([sys.executable, "-c", APPLIED], capture_output=True, text=True,
                       check=True, env={**env, **env_extra})
  return out.stdout.split()[-1]


def test_flags_reach_xla_before_it_starts():
  assert run_applied({runtime.ENV_VAR: " ".join(runtime.ONEDNN_DOT)}) == "onednn"


def test_user_xla_flags_win_and_unknown_flags_are_skipped():
  onednn = " ".join(runtime.ONEDNN_DOT)
  assert run_applied({runtime.ENV_VAR: onednn, "XLA_FLAGS": "--xla_cpu_use_onednn=false"}) == (
      "default")
  # An unknown flag would abort JAX at start; it is skipped instead.
  assert run_applied({runtime.ENV_VAR: "--xla_cpu_no_such_flag_anywhere=1"}) == "default"


@pytest.mark.slow
def test_self_check_on_this_machine(tmp_path, monkeypatch, record_figure):
  """XLA's defaults pass; the verdict on oneDNN dots is recorded (jaxlib 0.10.2 on the AMD EPYC
  measured: wrong (a @ b) * 0.25, then an abort); verdicts are cached."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert runtime.verify_xla_flags([]) == (True, "passed")
  ok, detail = runtime.verify_xla_flags(list(runtime.ONEDNN_DOT))
  record_figure("xla_cpu_onednn_dot_self_check", {"ok": ok, "detail": detail})
  cached = json.loads((tmp_path / "sampot_jax" / "xla_cpu_flags_checked.json").read_text())
  assert len(cached) == 2
  assert runtime.verify_xla_flags(list(runtime.ONEDNN_DOT)) == (ok, detail + " (cached)")
