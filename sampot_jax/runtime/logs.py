"""What a run prints: the project's own log lines and progress bars; libraries' INFO chatter
(Orbax's checkpoint threads, TFDS's builders, absl's own) only when asked for.

Orbax and TFDS log through absl like the project does, so records are told apart by the file
that logged them: INFO and below from outside the project's packages are dropped unless
--verbosity is 1 or more. Warnings and errors always show.
"""
import logging
from pathlib import Path
import sys

_PACKAGE = str(Path(__file__).resolve().parents[1])  # sampot_jax/, wherever it is installed


class ProjectOnly(logging.Filter):
  """Passes warnings and errors, and lower records logged from the project's own files
  (the sampot_jax package and the running script, main.py)."""

  def __init__(self):
    super().__init__()
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    self.roots = (_PACKAGE,) + ((str(Path(script).resolve()),) if script else ())

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return str(Path(record.pathname).resolve()).startswith(self.roots)


def quiet_libraries(verbosity: int) -> None:
  """Drops libraries' INFO records from absl's handler unless verbosity >= 1."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  for existing in [f for f in handler.filters if isinstance(f, ProjectOnly)]:
    handler.removeFilter(existing)
  if verbosity < 1:
    handler.addFilter(ProjectOnly())
