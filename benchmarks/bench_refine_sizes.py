"""refine on a folder of mixed sizes: batched (one compiled evolution) against one image per call.

    python -m benchmarks.bench_refine_sizes --baseline c5d0ad2 --out benchmarks/results/refine_sizes_cpu.json

Makes a folder of 64 images of 8 sizes (the Montgomery test X-rays, resized; random images where
../shared is absent), one rough box each around the left lung (or the image's right half), and
runs `python main.py --config configs/refine.py` on it twice in one process tree: this checkout
(batches of --batch-size, any mix of sizes) and the `--baseline` commit (a git worktree: one
image per compiled call, a compilation per new size). Both use the same regressor (--regressor,
a train_regressor workdir) and LiteMedSAM. Prints and writes images per second (the run's
seconds from summary.json, model loading excluded), the compilations each reports, and how far
apart their kept masks are (Dice per image).
"""
import argparse
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "montgomery"
SIZES = [(512, 512), (400, 512), (512, 400), (300, 300), (640, 480), (480, 640), (256, 384),
         (720, 600)]


def make_folder(folder: Path, n: int) -> Path:
  """n images cycling through SIZES and a prompts.csv of rough boxes; returns the CSV."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  ids = sorted(p.stem for p in (DATA / "images").glob("*.png")) if DATA.is_dir() else []
  rows = ["file,x0,y0,x1,y1"]
  for i in range(n):
    h, w = SIZES[i % len(SIZES)]
    if ids:
      sid = ids[i % len(ids)]
      image = Image.open(DATA / "images" / f"{sid}.png").resize((w, h), Image.Resampling.BILINEAR)
      mask = np.asarray(Image.open(DATA / "masks" / "left" / f"{sid}.png").resize(
          (w, h), Image.Resampling.NEAREST)) > 0
      ys, xs = np.nonzero(mask)
      box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], float)
    else:
      image = Image.fromarray(rng.integers(0, 255, (h, w)).astype(np.uint8))
      box = np.array([w * 0.55, h * 0.15, w * 0.9, h * 0.8])
    size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    box = np.clip(box + rng.uniform(-0.15, 0.15, 4) * size, 0, [w - 1, h - 1] * 2)
    image.save(folder / f"im{i:02d}.png")
    rows.append(f"im{i:02d}.png," + ",".join(f"{v:.1f}" for v in box))
  prompts = folder.parent / "prompts.csv"
  prompts.write_text("\n".join(rows) + "\n")
  return prompts


def run_refine(checkout: Path, images: Path, prompts: Path, out: Path, extra: list) -> dict:
  env = dict(os.environ, PYTHONPATH=str(checkout))
  t0 = time.time()
  proc = subprocess.run([sys.executable, "main.py", "--config", "configs/refine.py",
                         f"--config.images={images}", f"--config.prompts={prompts}",
                         "--workdir", str(out), *extra], cwd=checkout, env=env,
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise SystemExit(f"refine in {checkout} failed:\n{proc.stderr[-3000:]}")
  summary = json.loads((out / "summary.json").read_text())
  seconds = summary["seconds"]["total"] - summary["seconds"]["models"]
  return {"wall_s": time.time() - t0, "refine_s": seconds,
          "images_per_s": summary["processed"] / seconds,
          "evolution_compilations": summary.get("evolution_compilations"),
          "compiled_programs": summary.get("compiled_programs"),
          "processed": summary["processed"]}


def kept_dice(a: Path, b: Path) -> list[float]:
  out = []
  for mask in sorted((a / "masks").glob("*.png")):
    x = np.asarray(Image.open(mask)) > 0
    y = np.asarray(Image.open(b / "masks" / mask.name)) > 0
    out.append(float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1)))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--baseline", required=True, help="commit with one image per call")
  parser.add_argument("--regressor", default="runs/lung_left", help="train_regressor workdir")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  regressor = str(Path(args.regressor).resolve())
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    prompts = make_folder(tmp / "images", args.images)
    worktree = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline],
                   cwd=ROOT, check=True, capture_output=True)
    try:
      # The same SAMPOT settings on both sides (the baseline's defaults were other ones).
      common = [f"--config.regressor.workdir={regressor}",
                f"--config.sam.checkpoint_dir={ROOT / 'checkpoints' / 'lite_medsam'}",
                "--config.evolve.num_steps=30", "--config.evolve.learning_rate=3.0",
                "--config.evolve.restart_jitter=3.0", "--config.evolve.iou_weight=0.3",
                "--config.evolve.ascend_blend=False"]
      baseline = run_refine(worktree, tmp / "images", prompts, tmp / "out_baseline", common)
      batched = run_refine(ROOT, tmp / "images", prompts, tmp / "out_batched",
                           common + [f"--config.batch_size={args.batch_size}"])
      dice = kept_dice(tmp / "out_batched", tmp / "out_baseline")
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT,
                     check=False, capture_output=True)
  report = {"cpu": platform.processor() or platform.machine(), "images": args.images,
            "sizes": [f"{w}x{h}" for h, w in SIZES], "baseline_commit": args.baseline,
            "batch_size": args.batch_size, "one_image_per_call": baseline, "batched": batched,
            "speedup": batched["images_per_s"] / baseline["images_per_s"],
            "kept_mask_dice_vs_baseline": {"min": min(dice), "median": float(np.median(dice)),
                                           "share_above_0.99": float(np.mean(np.array(dice) > 0.99))}}
  print(json.dumps(report, indent=1))
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
  main()
