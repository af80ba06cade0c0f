"""The problems a user can fix: main.py prints these as one `error: ...` paragraph.

Every other exception is a bug (ours or a library's) and keeps its traceback. Each class
also derives from the built-in exception a Python caller would expect (ValueError,
FileNotFoundError, ...), so library code can catch it as before.

    UserError
      ConfigError            a setting that cannot work (names the --config.* field and the fix)
      BadInputError          one unusable input: an image, a mask, a CSV row (names file, line)
      BadInputsError         several, reported together (on_bad_example='error')
      MissingInputError      a file or folder the config names does not exist
      OutputExistsError      an output path holds something a run must not overwrite
      WorkdirBusyError       another live run writes to the same --workdir
      Interrupted            Ctrl-C: what was done is written (exit status 130)
      MissingCheckpointError a model's weights are not where the config says
      ModelMismatchError     saved weights are not the model the config asks for
      CheckpointError        a .pth file that cannot be read safely or completely
      PortError              a state dict that does not fit the SAM variant
      ParamsDirError         a parameter folder that is absent, incomplete or damaged
      RegressorError         a trained regressor that is incomplete, damaged or does not fit
      ResumeError            training checkpoints that cannot be resumed with this config
      DownloadError          a file that could not be fetched, or is not the file
        CachedFileMismatch   a cached file under a known name that is not that file
"""


class UserError(Exception):
  """A problem the user can fix; its message says what and how."""


class ConfigError(UserError, ValueError):
  """A setting that cannot work; the message names the --config.* field and the fix."""


class BadInputError(UserError, ValueError):
  """One input the run cannot use (an image, a mask, an example, a CSV row).

  Attributes: file (str), reason (str), line (int or None: the line of the CSV named by
  `source` that holds the input).
  """

  def __init__(self, file, reason: str, *, line: int | None = None, source: str = "prompts CSV"):
    self.file = str(file)
    self.reason = reason
    self.line = line
    where = f" ({source} line {line})" if line is not None else ""
    super().__init__(f"{self.file}{where}: {reason}")

  def record(self) -> dict:
    """{'file', 'line', 'reason'}: the row a run's summary.json lists for a skipped input."""
    return {"file": self.file, "line": self.line, "reason": self.reason}


class BadInputsError(UserError, ValueError):
  """Several bad inputs with config.on_bad_example='error': every one, by file and line."""

  def __init__(self, problems: list[BadInputError], shown: int = 20):
    self.problems = list(problems)
    listed = "\n".join(f"  {p}" for p in self.problems[:shown])
    more = (f"\n  ... and {len(self.problems) - shown} more"
            if len(self.problems) > shown else "")
    super().__init__(
        f"{len(self.problems)} bad input(s) (config.on_bad_example='error'; 'skip' logs and "
        f"skips them):\n{listed}{more}")


class MissingInputError(UserError, FileNotFoundError):
  """A file or folder the config names does not exist (the message says what it should hold)."""


class OutputExistsError(UserError, FileExistsError):
  """An output path holds something a run must not overwrite (the message says what to do)."""


class WorkdirBusyError(UserError, RuntimeError):
  """Another live run (its pid in WORKDIR/.lock) writes to the same --workdir."""


class Interrupted(UserError):
  """Ctrl-C during a task that wrote what it had finished; main.py exits with status 130."""
  exit_status = 130


class MissingCheckpointError(UserError, FileNotFoundError):
  """A model's weights are not where the config says (with the commands that make them)."""


class ModelMismatchError(UserError, ValueError):
  """Saved weights are not the model the config asks for (SAM variant, regressor target)."""


class CheckpointError(UserError, ValueError):
  """A `.pth` file that cannot be read safely or completely."""


class PortError(UserError, ValueError):
  """A state dict that does not fit the SAM variant (missing, unknown or mis-shaped keys)."""


class ParamsDirError(UserError, ValueError):
  """A parameter folder that is absent, incomplete or damaged."""


class RegressorError(UserError, ValueError):
  """A trained regressor in a folder that is incomplete, damaged or does not fit."""


class ResumeError(UserError, ValueError):
  """workdir/checkpoints cannot be resumed with this config (other settings, or unreadable)."""


class DownloadError(UserError, RuntimeError):
  """A file could not be fetched, or what arrived is not the file."""


class CachedFileMismatch(DownloadError):
  """A file in the cache under a checkpoint's name is not that checkpoint."""
