"""The one reader of prompt CSV files: one prompt per image, in original pixels.

    file,x0,y0,x1,y1          boxes (LiteMedSAM's prompt); `refine` keys rows by `file`
    id,x,y                    clicks; `evaluate` keys rows by the split's image `id`
    file,x0,y0,x1,y1,x,y      a box and a click together
    file,slice,x0,y0,x1,y1    a volume's slices, one row each (data/volumes.py: slice = the
                              third voxel index, x and y the first two)
    file,x0,y0,z0,x1,y1,z1    a 3-D box: every slice z0..z1 of the volume gets the box

One set of rules for every task:
- The header names the key column (`file` or `id`) and exactly one prompt kind
  (predictor.PROMPT_FIELDS); columns are matched by name, in any order, spaces ignored.
- UTF-8 with or without a BOM (Excel's 'CSV UTF-8'), or UTF-16 with its BOM (Excel's
  'Unicode Text'). Other bytes are an error naming the file, line and byte, and the fix.
- Blank lines and lines starting with '#' are skipped; line numbers are the physical lines an
  editor shows, from 1 at the top of the file.
- A row with a missing or non-numeric value, or an empty key, is a bad row (an
  errors.BadInputError naming file and line); a field over FIELD_LIMIT characters, or a quote
  that never closes, is an error of the whole file that names its line.
- `file` is the image's path relative to the images folder ('./a\\b.png' reads 'a/b.png').
"""
import csv
import dataclasses
import io
from pathlib import Path

import numpy as np

from sampot_jax import errors
from sampot_jax.sam import predictor

KEYS = ("file", "id")
BOX_3D = ("x0", "y0", "z0", "x1", "y1", "z1")
# Longest field read, characters: a file name or a number is far shorter; a longer field is a
# broken file (a quote that never closes swallows the rest of it).
FIELD_LIMIT = 65536
_FIX = "save the file as UTF-8 (Excel: 'CSV UTF-8')"


@dataclasses.dataclass(frozen=True)
class PromptRow:
  key: str  # the image: its file name relative to the folder, or its id in the split
  line: int  # physical line in the CSV file
  prompt: np.ndarray  # (D,) float64, original pixels
  slice: int | None = None  # a volume's slice (the third voxel index); None: a 2-D image


def normalise_name(name: str) -> str:
  """'./a\\b.png' -> 'a/b.png', './ct/' -> 'ct' (POSIX, no leading ./, no trailing /)."""
  name = name.strip().replace("\\", "/")
  while name.startswith("./"):
    name = name[2:]
  return name.rstrip("/")


def decode(path: Path) -> str:
  """The file's text (UTF-8 with or without BOM, or UTF-16 with BOM), or a BadInputError
  naming the line and byte that is neither, with the fix."""
  data = path.read_bytes()
  if data.startswith((b"\xff\xfe", b"\xfe\xff")):
    try:
      return data.decode("utf-16")
    except UnicodeDecodeError as e:
      raise errors.BadInputError(path, f"starts as UTF-16 but byte {e.start} is not UTF-16; "
                                 f"{_FIX}") from None
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise errors.BadInputError(
        path, f"line {line}, byte {column} (byte {e.start} of the file): "
        f"{data[e.start:e.end]!r} is not UTF-8 (a Latin-1 or Windows-1252 file?); {_FIX}"
    ) from None


def _rows(path: Path):
  """(physical line, cells) of every non-blank, non-comment row."""
  reader = csv.reader(io.StringIO(decode(path), newline=""))
  limit = csv.field_size_limit()
  csv.field_size_limit(FIELD_LIMIT)
  try:
    first = 1
    out = []
    for row in reader:
      line = first  # the row's first physical line
      first = reader.line_num + 1
      if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#"):
        out.append((line, row))
    return out
  except csv.Error as e:
    raise errors.BadInputError(
        path, f"line {first}: {e} (a field over {FIELD_LIMIT} characters, or a quote '\"' that "
        "is never closed, which swallows the lines after it); fix that line") from None
  finally:
    csv.field_size_limit(limit)


def read_prompts(path, key: str = "file") -> tuple[int, list[PromptRow], list[errors.BadInputError]]:
  """-> (D, the rows that parse, one BadInputError per row that does not).

  The header must be `key` plus exactly one of the PROMPT_FIELDS sets (else a BadInputError
  for the whole file). Duplicate rows for one image are returned as they are (see `match`,
  `prompts_for_ids`).
  """
  if key not in KEYS:
    raise ValueError(f"key={key!r} is not one of {KEYS}")
  path = Path(path).expanduser()
  example = f"{key},x0,y0,x1,y1 (boxes) or {key},x,y (clicks)"
  if not path.is_file():
    raise errors.BadInputError(path, f"is not a file; give a CSV with a header {example}.")
  numbered = _rows(path)
  if not numbered:
    raise errors.BadInputError(path, f"is empty; its first line must be a header such as "
                               f"{example}.")
  header_line, header = numbered[0]
  header = [h.strip().lower() for h in header]
  kinds = {tuple(sorted(fields)): d for d, fields in predictor.PROMPT_FIELDS.items()}
  fields = tuple(sorted(h for h in header if h not in (key, "slice")))
  box3d = key == "file" and fields == tuple(sorted(BOX_3D))
  if (key not in header or (fields not in kinds and not box3d)
      or len(set(header)) != len(header) or (box3d and "slice" in header)):
    raise errors.BadInputError(
        path, f"line {header_line}: the header is {','.join(header)!s}; expected {key},x0,y0,"
        f"x1,y1 (boxes), {key},x,y (clicks) or {key},x0,y0,x1,y1,x,y (a box and a click), one "
        "prompt kind per file" + (" (volumes: file,slice,x0,y0,x1,y1 or file,x0,y0,z0,x1,y1,z1)"
                                 if key == "file" else "") + ".")
  dim = 4 if box3d else kinds[fields]
  columns = [header.index(name) for name in (BOX_3D if box3d else predictor.PROMPT_FIELDS[dim])]
  if "slice" in header:
    columns.append(header.index("slice"))
  key_column = header.index(key)
  rows, bad = [], []
  for line, row in numbered[1:]:
    name = row[key_column].strip() if key_column < len(row) else ""
    name = normalise_name(name) if key == "file" else name
    if not name:
      bad.append(errors.BadInputError(path.name, line=line, reason=f"the row has no {key}"))
      continue
    if len(row) != len(header):
      bad.append(errors.BadInputError(
          name, line=line, reason=f"the row has {len(row)} values; the header has "
          f"{len(header)} ({','.join(header)})"))
      continue
    try:
      values = np.array([float(row[c]) for c in columns], np.float64)
    except ValueError:
      given = ", ".join(f"{header[c]}={row[c].strip()!r}" for c in columns)
      bad.append(errors.BadInputError(name, line=line,
                                      reason=f"{given}: not {len(columns)} numbers"))
      continue
    if box3d:
      x0, y0, z0, x1, y1, z1 = values
      if z0 != int(z0) or z1 != int(z1) or z0 < 0 or z1 < z0:
        bad.append(errors.BadInputError(name, line=line, reason=f"z0={z0:g}, z1={z1:g}: the "
                                        "slices must be whole numbers with 0 <= z0 <= z1"))
        continue
      rows.extend(PromptRow(name, line, np.array([x0, y0, x1, y1]), z)
                  for z in range(int(z0), int(z1) + 1))
    elif "slice" in header:
      z = values[-1]
      if z != int(z) or z < 0:
        bad.append(errors.BadInputError(name, line=line, reason=f"slice={z:g} is not a slice "
                                        "number (0, 1, 2, ...)"))
        continue
      rows.append(PromptRow(name, line, values[:-1], int(z)))
    else:
      rows.append(PromptRow(name, line, values))
  return dim, rows, bad


def match(images: dict, rows: list[PromptRow], bad_rows: list[errors.BadInputError]):
  """Pairs the images of a folder with file-keyed prompt rows.

  Returns:
    (pairs: [(name, PromptRow)] in CSV order, bad: [BadInputError]) where bad holds the rows
    that did not parse, rows naming no image, images without a row, and every row of an image
    named more than once (which prompt was meant is unclear).
  """
  bad = list(bad_rows)
  by_key: dict[tuple, list[PromptRow]] = {}
  for row in rows:
    by_key.setdefault((row.key, row.slice), []).append(row)
  unparsed = {b.file for b in bad_rows}
  pairs = []
  for (name, z), group in by_key.items():
    where = "image" if z is None else f"slice {z}"
    if name not in images:
      for row in group:
        bad.append(errors.BadInputError(name, line=row.line,
                                        reason="no such image in config.images"))
      continue
    if len(group) > 1:
      lines = ", ".join(sorted({str(r.line) for r in group}))
      bad.append(errors.BadInputError(
          name, line=group[0].line, reason=f"the {where} has {len(group)} prompt rows (lines "
          f"{lines}); give one per {'image' if z is None else 'slice'}"))
      continue
    if name in unparsed and z is None:
      continue  # its other row did not parse: reported there (a volume's other slices go on)
    pairs.append((name, group[0]))
  named = {name for name, _ in by_key}
  for name in images:
    if name not in named and name not in unparsed:
      bad.append(errors.BadInputError(name, line=None,
                                      reason="the image has no row in the prompts CSV"))
  return pairs, bad


def prompts_for_ids(path, ids, image_shape: tuple[int, int], split_ids=None) -> np.ndarray:
  """An id-keyed prompts CSV -> (N, D) float32 in the order of `ids` (the evaluate task).

  Every id needs exactly one row; unparsable rows, unknown ids, duplicates, missing ids and
  prompts outside the image are all reported together (errors.BadInputsError, each naming
  its line). Coordinates are pixels of the images as evaluated (config.data.image_size).

  Args:
    ids: the images evaluated (with config.max_images, the first ones of the split).
    image_shape: (H, W) of those images.
    split_ids: every id of the split, if known: rows for those not evaluated (beyond
      max_images) are then skipped instead of refused.
  """
  path = Path(path).expanduser()
  dim, rows, bad = read_prompts(path, key="id")
  ids = list(ids)
  wanted = {sid: i for i, sid in enumerate(ids)}
  in_split = set(ids if split_ids is None else split_ids)
  problems = list(bad)
  seen: dict[str, int] = {}
  prompts = np.full((len(ids), dim), np.nan, np.float32)
  for row in rows:
    if row.key not in wanted:
      if row.key in in_split:
        continue  # In the split, not among the images evaluated.
      if split_ids is None:
        reason = (f"image id {row.key!r} is not in the evaluated set of {len(ids)} images "
                  f"(e.g. {ids[:3]}). If the run evaluates only the first config.max_images "
                  "images of the split, remove the other rows or set config.max_images=0; "
                  "otherwise fix the id or the split (config.split)")
      else:
        reason = (f"image id {row.key!r} is not in the split ({len(in_split)} images, e.g. "
                  f"{ids[:3]}); fix the id or the split (config.split)")
      problems.append(errors.BadInputError(row.key, line=row.line, reason=reason))
      continue
    if row.key in seen:
      problems.append(errors.BadInputError(
          row.key, line=row.line, reason=f"image id {row.key!r} already has a prompt on line "
          f"{seen[row.key]}; give one prompt per image"))
      continue
    seen[row.key] = row.line
    prompts[wanted[row.key]] = row.prompt
  unparsed = {b.file for b in bad}
  missing = [sid for sid in ids if sid not in seen and sid not in unparsed]
  if missing:
    problems.append(errors.BadInputError(
        path, f"no prompt for {len(missing)} image(s), e.g. {missing[:3]}; give one row per "
        f"evaluated image ({len(ids)} images)."))
  if problems:
    raise errors.BadInputsError([_in_file(p, path) for p in problems])
  try:
    return predictor.check_prompts(prompts, image_shape, ids=ids)
  except ValueError as e:
    raise errors.BadInputError(path, str(e)) from None


def _in_file(problem: errors.BadInputError, path: Path) -> errors.BadInputError:
  """A row's problem as '<csv path> (line N): ...' (the key is an id, not a file)."""
  if problem.file == str(path):
    return problem
  return errors.BadInputError(path, problem.reason if problem.line is None else
                              f"line {problem.line}: {problem.reason}")
