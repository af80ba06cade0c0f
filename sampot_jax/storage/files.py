"""Writing files so that a killed run never leaves a half-written one.

Every writer puts its bytes in a temporary sibling (same directory, so the
rename cannot cross file systems) and `os.replace`s it onto the target.
"""
import csv
import io
import json
import os
from pathlib import Path
import re
import tempfile
from typing import Any, Callable

from absl import logging
import numpy as np


def atomic_write(path, write: Callable[[str], None], suffix: str = "") -> Path:
  """Calls write(tmp_path) beside `path`, then renames the result onto `path`.

  `suffix` keeps the temporary name's extension for writers that infer the
  format from it (matplotlib, numpy). The file is 0644: mkstemp's 0600 would
  make results readable by their owner only.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_text(path, text: str) -> Path:
  """`text` to `path` (UTF-8), atomically."""
  return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                      Path(path).suffix)


def write_bytes(path, data: bytes) -> Path:
  """`data` to `path`, atomically."""
  return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), Path(path).suffix)


def write_npz(path, arrays: dict, compressed: bool = True) -> Path:
  """A dict of arrays to an .npz file, atomically."""
  def write(tmp):
    with open(tmp, "wb") as f:
      (np.savez_compressed if compressed else np.savez)(f, **arrays)
  return atomic_write(path, write, ".npz")


def json_ready(x: Any) -> Any:
  """Numpy scalars and arrays -> Python; NaN/inf -> None (strict JSON)."""
  if isinstance(x, dict):
    return {str(k): json_ready(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_ready(v) for v in x]
  if isinstance(x, np.ndarray):
    return json_ready(x.tolist())
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if np.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def write_json(path, obj: Any) -> Path:
  """`obj` (see json_ready) as indented strict JSON, atomically."""
  return write_text(path, json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n")


# A spreadsheet runs a cell that starts with one of these as a formula (a file named
# "=cmd|' /C calc'!A0.png", say); text cells that do are written behind a "'", which the
# spreadsheet shows as text (read_csv takes it off again). Numbers are written as
# they are.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# A plain decimal number: a spreadsheet reads it as a number, not a formula, whatever its sign
# (a "-1" read back from a CSV and written again stays "-1").
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _cell(value):
  if (isinstance(value, str) and value.startswith(FORMULA_STARTS + ("'",))
      and not _NUMBER.fullmatch(value)):
    return "'" + value
  return value


def csv_text(rows: list[dict], fields=()) -> str:
  """rows as CSV text: `fields` first, then other columns in order of first appearance, missing
  cells empty; text that a spreadsheet would run as a formula escaped (FORMULA_STARTS)."""
  fields = list(fields)
  for row in rows:
    fields += [k for k in row if k not in fields]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=[_cell(f) for f in fields], restval="")
  writer.writeheader()
  writer.writerows({_cell(k): _cell(v) for k, v in row.items()} for row in rows)
  return buffer.getvalue()


def _uncell(value: str) -> str:
  return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS + ("'",)) \
      else value


def read_csv(path: Path) -> list[dict]:
  """A CSV this project wrote (csv_text), as rows of text (escapes taken off); [] (with a
  warning) when absent or unreadable."""
  path = Path(path)
  if not path.is_file():
    return []
  try:
    with open(path, newline="", encoding="utf-8") as f:
      return [{_uncell(k): _uncell(v) for k, v in row.items()} for row in csv.DictReader(f)]
  except (OSError, csv.Error, UnicodeDecodeError) as e:
    logging.warning("%s cannot be read (%s); it is rewritten from this run's rows.", path, e)
    return []
