"""python main.py as a user runs it: user errors are one `error:` paragraph, not a traceback."""
import os
import re
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]


def main_py(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def assert_one_error(proc, code, *phrases):
  """Exit status `code`, and stderr is absl's log lines (the XLA:CPU choice at start-up), then one
  `error:` paragraph."""
  assert proc.returncode == code, proc.stderr[-3000:]
  unlogged = "\n".join(line for line in proc.stderr.splitlines()
                       if not re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d", line))
  assert unlogged.startswith("error: "), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for phrase in phrases:
    assert phrase in proc.stderr, proc.stderr[-3000:]


def test_a_bad_setting_is_named(tmp_path):
  proc = main_py("--config", "configs/train_regressor_tiny.py", "--workdir", tmp_path / "run",
                 "--config.batch_size=0")
  assert_one_error(proc, 1, "config.batch_size=0")
  assert not (tmp_path / "run").exists()


def test_a_missing_checkpoint_is_one_message(tmp_path):
  proc = main_py("--config", "configs/port_sam.py", "--workdir", tmp_path,
                 f"--config.checkpoint={tmp_path / 'absent.pth'}")
  assert_one_error(proc, 1, str(tmp_path / "absent.pth"), "no such file")


def test_traceback_flag_shows_the_stack(tmp_path):
  proc = main_py("--config", "configs/train_regressor_tiny.py", "--workdir", tmp_path,
                 "--config.batch_size=0", "--traceback")
  assert proc.returncode == 1
  assert "Traceback" in proc.stderr and "config.batch_size=0" in proc.stderr


def test_bad_flags_exit_with_status_2(tmp_path):
  proc = main_py("--config", "configs/train_regressor_tiny.py", "--workdir", tmp_path,
                 "--config.batch_siz=4")
  assert_one_error(proc, 2, "batch_siz", 'Did you mean "batch_size"')
  proc = main_py("--config", tmp_path / "absent.py", "--workdir", tmp_path)
  assert_one_error(proc, 2, "absent.py")
  proc = main_py("--config", "configs/train_regressor_tiny.py", "--workdir", tmp_path, "--bogus")
  assert_one_error(proc, 2, "bogus")
  proc = main_py("--config", "configs/train_regressor_tiny.py", "--workdir", tmp_path, "extra")
  assert proc.returncode == 2 and "Unexpected arguments: ['extra']" in proc.stderr
