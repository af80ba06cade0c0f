"""Subject splits: a `splits.csv` file, or a deterministic split when there is none.

The deterministic split keeps the SAMPOT paper's proportions (41/28/53 of 122
subjects: train/val/test), stratified by finding. Within each finding, subjects
are ordered by the SHA-256 of their id and cut in those proportions, so the
split does not depend on file listing order or on any random state.
"""
import csv
import hashlib
from sampot_jax import errors
from pathlib import Path

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


def deterministic_split(findings: dict[str, str],
                        proportions=PAPER_PROPORTIONS) -> dict[str, str]:
  """Stratified hash split. {id: finding} -> {id: 'train' | 'val' | 'test'}."""
  total = sum(proportions)
  by_finding: dict[str, list[str]] = {}
  for sid, finding in findings.items():
    by_finding.setdefault(finding, []).append(sid)
  out = {}
  for ids in by_finding.values():
    ids = sorted(ids, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    n = len(ids)
    cut1 = round(n * proportions[0] / total)
    cut2 = round(n * (proportions[0] + proportions[1]) / total)
    for i, sid in enumerate(ids):
      out[sid] = SPLITS[0] if i < cut1 else SPLITS[1] if i < cut2 else SPLITS[2]
  return out

