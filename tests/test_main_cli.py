"""python main.py as a user runs it: user errors are one `error:` paragraph, not a traceback;
any other exception is a bug and keeps its traceback.

main.py's flag parsing and task call run in this process (what app.run does around them is
absl's); one test runs the real command in a subprocess.
"""
import os
import re
from pathlib import Path
import subprocess
import sys

from absl import app
import pytest

import main as main_py

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, monkeypatch, *args) -> tuple[int, str]:
  """(exit status, stderr) of `python main.py *args`, in this process (ml_collections reads the
  --config.* overrides from sys.argv)."""
  argv = ["main.py", *map(str, args)]
  monkeypatch.setattr(sys, "argv", argv)
  main_py.FLAGS.unparse_flags()
  try:
    rest = main_py.parse_flags(argv)
    code = main_py.main(rest)
  except SystemExit as e:
    code = e.code
  except app.UsageError as e:
    code = e.exitcode
    sys.stderr.write(f"{e}\n")
  finally:
    main_py.FLAGS.unparse_flags()
  return code, capsys.readouterr().err


def assert_one_error(code, stderr, want, *phrases):
  """Exit status `want`, and stderr is log lines, then one `error:` paragraph."""
  assert code == want, stderr[-3000:]
  unlogged = "\n".join(line for line in stderr.splitlines()
                       if not re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d", line))
  assert unlogged.startswith("error: "), stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  for phrase in phrases:
    assert phrase in stderr, stderr[-3000:]


def test_the_command_line_prints_one_paragraph(tmp_path):
  """The real entry point (app.run, absl logging, exit status) in a subprocess."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run(
      [sys.executable, "main.py", "--config", "configs/regressor_paper_tiny.py", "--workdir",
       str(tmp_path / "run"), "--config.batch_size=0"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert_one_error(proc.returncode, proc.stderr, 1, "config.batch_size=0")
  assert not (tmp_path / "run").exists()


def test_a_missing_checkpoint_is_one_message(tmp_path, capsys, monkeypatch):
  code, err = run_main(capsys, monkeypatch, "--config", "configs/port_sam.py", "--workdir", tmp_path,
                       f"--config.checkpoint={tmp_path / 'absent.pth'}")
  assert_one_error(code, err, 1, str(tmp_path / "absent.pth"), "no such file")


def test_traceback_flag_shows_the_stack(tmp_path, capsys, monkeypatch):
  from sampot_jax import errors  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError, match="config.batch_size=0"):
    run_main(capsys, monkeypatch, "--config", "configs/regressor_paper_tiny.py", "--workdir", tmp_path,
             "--config.batch_size=0", "--traceback")


def test_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
  """A ValueError that is not a user error (here from numpy) is raised, not printed as one."""
  from sampot_jax.tasks import port  # pylint: disable=g-import-not-at-top

  def broken(config, workdir):
    del config, workdir
    import numpy as np  # pylint: disable=g-import-not-at-top
    np.zeros(3).reshape(2, 2)

  monkeypatch.setattr(port, "run", broken)
  with pytest.raises(ValueError, match="cannot reshape"):
    run_main(capsys, monkeypatch, "--config", "configs/port_sam.py", "--workdir", tmp_path)


def test_bad_flags_exit_with_status_2(tmp_path, capsys, monkeypatch):
  code, err = run_main(capsys, monkeypatch, "--config", "configs/regressor_paper_tiny.py", "--workdir",
                       tmp_path, "--config.batch_siz=4")
  assert_one_error(code, err, 2, "batch_siz", 'Did you mean "batch_size"')
  code, err = run_main(capsys, monkeypatch, "--config", tmp_path / "absent.py", "--workdir", tmp_path)
  assert_one_error(code, err, 2, "absent.py")
  code, err = run_main(capsys, monkeypatch, "--config", "configs/regressor_paper_tiny.py", "--workdir",
                       tmp_path, "--bogus")
  assert_one_error(code, err, 2, "bogus")
  code, err = run_main(capsys, monkeypatch, "--config", "configs/regressor_paper_tiny.py", "--workdir",
                       tmp_path, "extra")
  assert code == 2 and "Unexpected arguments: ['extra']" in err
