"""The prompts CSV of the refine task: one prompt per image, in original pixels.

    file,x0,y0,x1,y1          boxes (LiteMedSAM's prompt)
    file,x,y                  clicks
    file,x0,y0,x1,y1,x,y      a box and a click together

The header says which kind the whole file holds (predictor.PROMPT_FIELDS); columns are matched
by name, so their order is free, and surrounding spaces are ignored. `file` is the image's path
relative to the images folder (its file name when the run is given one file). Blank lines and
lines starting with '#' are skipped. Line numbers count from 1 at the header, as an editor
shows them.
"""
import csv
import dataclasses
from pathlib import Path

import numpy as np

from sampot_jax.sam import predictor


class BadInputError(ValueError):
  """An input the run cannot use; the message names the file and, where known, the CSV line."""

  def __init__(self, file: str, line: int | None, reason: str, source: str = "prompts CSV"):
    self.file = file
    self.line = line
    self.reason = reason
    where = f" ({source} line {line})" if line is not None else ""
    super().__init__(f"{file}{where}: {reason}")

  def record(self) -> dict:
    return {"file": self.file, "line": self.line, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class PromptRow:
  file: str
  line: int
  prompt: np.ndarray  # (D,) float64, original pixels


def normalise_name(name: str) -> str:
  """'./a\\b.png' -> 'a/b.png' (POSIX, no leading ./)."""
  name = name.strip().replace("\\", "/")
  while name.startswith("./"):
    name = name[2:]
  return name


def read_prompts(path) -> tuple[int, list[PromptRow], list[BadInputError]]:
  """-> (D, the rows that parse, one BadInputError per row that does not).

  The header must be `file` plus exactly one of the PROMPT_FIELDS sets (else ValueError, a
  problem of the whole file). A row with a missing or non-numeric value, or an empty file name,
  is a bad row. Duplicate rows for one file are returned as they are (see `match`).
  """
  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"config.prompts={str(path)!r} is not a file; give a CSV with a "
                            "header file,x0,y0,x1,y1 (boxes) or file,x,y (clicks).")
  with open(path, newline="", encoding="utf-8-sig") as f:
    lines = list(csv.reader(f))
  numbered = [(i + 1, row) for i, row in enumerate(lines)
              if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#")]
  if not numbered:
    raise ValueError(f"{path} is empty; its first line must be a header such as "
                     "file,x0,y0,x1,y1 (boxes) or file,x,y (clicks).")
  header_line, header = numbered[0]
  header = [h.strip().lower() for h in header]
  kinds = {tuple(sorted(fields)): d for d, fields in predictor.PROMPT_FIELDS.items()}
  fields = tuple(sorted(h for h in header if h != "file"))
  if "file" not in header or fields not in kinds or len(set(header)) != len(header):
    raise ValueError(
        f"{path} line {header_line}: the header is {','.join(header)!s}; expected file,x0,y0,x1,y1 "
        "(boxes), file,x,y (clicks) or file,x0,y0,x1,y1,x,y (a box and a click), one prompt kind "
        "per file.")
  dim = kinds[fields]
  columns = [header.index(name) for name in predictor.PROMPT_FIELDS[dim]]
  file_column = header.index("file")
  rows, bad = [], []
  for line, row in numbered[1:]:
    name = normalise_name(row[file_column]) if file_column < len(row) else ""
    if not name:
      bad.append(BadInputError(f"{path.name}", line, "the row has no file name"))
      continue
    if len(row) != len(header):
      bad.append(BadInputError(name, line, f"the row has {len(row)} values; the header has "
                               f"{len(header)} ({','.join(header)})"))
      continue
    try:
      prompt = np.array([float(row[c]) for c in columns], np.float64)
    except ValueError:
      values = ",".join(row[c].strip() for c in columns)
      bad.append(BadInputError(name, line, f"the prompt ({values}) is not "
                               f"{len(columns)} numbers"))
      continue
    rows.append(PromptRow(name, line, prompt))
  return dim, rows, bad


def match(images: dict, rows: list[PromptRow], bad_rows: list[BadInputError]):
  """Pairs images with prompt rows.

  Returns:
    (pairs: [(name, PromptRow)] in CSV order, bad: [BadInputError]) where bad holds the rows
    that did not parse, rows naming no image, images without a row, and every row of an image
    named more than once (which prompt was meant is unclear).
  """
  bad = list(bad_rows)
  by_file: dict[str, list[PromptRow]] = {}
  for row in rows:
    by_file.setdefault(row.file, []).append(row)
  unparsed = {b.file for b in bad_rows}
  pairs = []
  for name, group in by_file.items():
    if name not in images:
      for row in group:
        bad.append(BadInputError(name, row.line, "no such image in config.images"))
      continue
    if len(group) > 1:
      lines = ", ".join(str(r.line) for r in group)
      bad.append(BadInputError(name, group[0].line,
                               f"the image has {len(group)} prompt rows (lines {lines}); give "
                               "one per image"))
      continue
    if name in unparsed:
      continue  # its other row did not parse: reported there
    pairs.append((name, group[0]))
  for name in images:
    if name not in by_file and name not in unparsed:
      bad.append(BadInputError(name, None, "the image has no row in the prompts CSV"))
  return pairs, bad
