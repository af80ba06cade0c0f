"""The markdown table of docs/sampot.md from evaluation runs' summary.json files.

    python -m sampot_jax.report.summary_table runs/lite_J0.05 runs/lite_J0.10 runs/lite_J0.15 ...

One row per method and run (ordered by box jitter J): mean and median Dice, and against the
initial prompt how many images improved, degraded by more than 0.02 and improved by more than
0.05; then the seconds per image of each run.
"""
import json
import sys
from pathlib import Path

METHODS = ("initial", "evolved", "safeguarded", "multimask", "iou_ascent", "random_search",
           "true_dice_ascent", "gt_box")


def read(path) -> dict:
  path = Path(path)
  return json.loads((path / "summary.json" if path.is_dir() else path).read_text())


def table(summaries: list[dict]) -> str:
  """Markdown rows for every method the summaries have, in METHODS order."""
  lines = ["| J | method | mean Dice | median | improved | degraded > 0.02 | improved > 0.05 |",
           "|---|---|---|---|---|---|---|"]
  for s in sorted(summaries, key=lambda s: s.get("box_jitter") or 0.0):
    j, n = s.get("box_jitter", "-"), s["num_images"]
    for method in [m for m in METHODS if m in s["dice"]] + sorted(set(s["dice"]) - set(METHODS)):
      d = s["dice"][method]
      counts = ["", "", ""]
      if method in s.get("vs_initial", {}):
        v = s["vs_initial"][method]
        counts = [f"{v[k]}/{n}" for k in ("improved", "degraded_by_more_than_0.02",
                                          "significantly_improved")]
      lines.append(f"| {j} | {method} | {d['mean']:.3f} | {d['median']:.3f} | "
                   + " | ".join(counts) + " |")
  lines += ["", "| J | seconds per image |", "|---|---|"]
  for s in sorted(summaries, key=lambda s: s.get("box_jitter") or 0.0):
    per = ", ".join(f"{k} {v:.2f}" for k, v in s.get("seconds_per_image", {}).items())
    lines.append(f"| {s.get('box_jitter', '-')} | {per} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  paths = (sys.argv[1:] if argv is None else argv)
  if not paths:
    raise SystemExit("usage: python -m sampot_jax.report.summary_table RUN_DIR_OR_SUMMARY_JSON ...")
  print(table([read(p) for p in paths]))


if __name__ == "__main__":
  main()
