"""runtime.logs: the project's INFO lines show, libraries' INFO chatter only with --verbosity."""
import logging
from pathlib import Path

from absl import logging as absl_logging

from sampot_jax.runtime import logs
from sampot_jax.tasks import common


def record(pathname: str, level=logging.INFO) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_library_info_is_dropped_and_project_info_kept():
  keep = logs.ProjectOnly()
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpointer.py"
  assert not keep.filter(record(orbax))
  assert keep.filter(record(orbax, logging.WARNING))  # warnings always show
  assert keep.filter(record(str(Path(common.__file__))))


def test_verbosity_brings_the_chatter_back():
  handler = absl_logging.get_absl_handler()
  try:
    logs.quiet_libraries(0)
    assert sum(isinstance(f, logs.ProjectOnly) for f in handler.filters) == 1
    logs.quiet_libraries(0)  # twice: still one filter
    assert sum(isinstance(f, logs.ProjectOnly) for f in handler.filters) == 1
    logs.quiet_libraries(1)
    assert not any(isinstance(f, logs.ProjectOnly) for f in handler.filters)
  finally:
    logs.quiet_libraries(1)
