"""Subject splits: a `splits.csv` file, or a deterministic split when there is none.

The deterministic split keeps the SAMPOT paper's proportions (41/28/53 of 122
subjects: train/val/test), stratified by finding. Within each finding, subjects
are ordered by the SHA-256 of their id (with a seed other than 0, of "seed:id")
and cut in those proportions, so the split depends on the ids and the seed only,
never on file listing order. Seed 0 is the split of earlier versions.
"""
import csv
import hashlib
from pathlib import Path

from sampot_jax import errors
from sampot_jax.storage import files

SPLITS = ("train", "val", "test")
PAPER_PROPORTIONS = (41, 28, 53)


def read_splits_csv(path) -> dict[str, tuple[str, str]]:
  """Reads `id,split[,finding]` rows. -> {id: (split, finding)} ('' when no finding column)."""
  path = Path(path)
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"id", "split"} - set(reader.fieldnames or ())
    if missing:
      raise errors.ConfigError(f"{path}: split file lacks column(s) {sorted(missing)}; expected a "
                       "header 'id,split[,finding]'.")
    out = {}
    for lineno, row in enumerate(reader, start=2):
      sid, split = (row["id"] or "").strip(), (row["split"] or "").strip()
      if split not in SPLITS:
        raise errors.ConfigError(f"{path}:{lineno}: split {split!r} for id {sid!r} is not one of "
                         f"{SPLITS}.")
      if sid in out:
        raise errors.ConfigError(f"{path}:{lineno}: id {sid!r} appears twice.")
      out[sid] = (split, (row.get("finding") or "").strip())
  return out


def deterministic_split(findings: dict[str, str], proportions=PAPER_PROPORTIONS,
                        seed: int = 0) -> dict[str, str]:
  """Stratified hash split. {id: finding} -> {id: 'train' | 'val' | 'test'}."""
  key = lambda s: hashlib.sha256((f"{seed}:{s}" if seed else s).encode()).hexdigest()
  total = sum(proportions)
  by_finding: dict[str, list[str]] = {}
  for sid, finding in findings.items():
    by_finding.setdefault(finding, []).append(sid)
  out = {}
  for ids in by_finding.values():
    ids = sorted(ids, key=key)
    n = len(ids)
    cut1 = round(n * proportions[0] / total)
    cut2 = round(n * (proportions[0] + proportions[1]) / total)
    for i, sid in enumerate(ids):
      out[sid] = SPLITS[0] if i < cut1 else SPLITS[1] if i < cut2 else SPLITS[2]
  return out


def write_splits_csv(path, table: dict[str, str], findings: dict[str, str]) -> Path:
  """Writes `id,split,finding` rows (sorted by id): the split a run used, to reuse or edit."""
  lines = ["id,split,finding"] + [f"{sid},{table[sid]},{findings.get(sid, '')}"
                                  for sid in sorted(table)]
  return files.write_text(Path(path), "\n".join(lines) + "\n")

