"""The paper's figures from an evaluation's arrays (matplotlib, Agg backend, PNG).

  dice_heatmap         Fig. 1: true Dice of SAM's mask for a click at each grid position
  score_vs_dice        Fig. 4 (b, c): SAM's IoU and the regressor's score vs true Dice
                       at the initial clicks
  trajectory           Fig. 5: a prompt's path with mask snapshots and their Dice
  initial_vs_evolved   Fig. 6: Dice after evolution vs Dice at the initial click
  regressor_scatter       Fig. 4 (a): predicted vs true Dice of the test candidates
  dice_vs_budget       the compare task: mean Dice against decoder budget, a line per method

Every function takes arrays and a path, draws one figure and writes it atomically.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from sampot_jax.storage import files  # pylint: disable=g-import-not-at-top,wrong-import-position

DPI = 110


def save(fig, path) -> Path:
  """Writes `fig` as PNG to a temporary name beside `path`, renames it, closes the figure."""
  path = Path(path)
  files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), ".png")
  plt.close(fig)
  return path


def _show_image(ax, image, target=None):
  ax.imshow(image, cmap="gray", interpolation="nearest")
  if target is not None and np.any(target):
    ax.contour(target, levels=[0.5], colors="lime", linewidths=0.8)
  ax.set_xticks([])
  ax.set_yticks([])


def dice_heatmap(path, image, target, dice_map, grid_clicks, click=None, title=""):
  """Fig. 1. image (H, W); target (H, W) bool; dice_map (n, n) over grid_clicks (n*n, 2)."""
  n = dice_map.shape[0]
  h, w = image.shape[:2]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
  xs, ys = grid_clicks[:n, 0], grid_clicks[::n, 1]
  cell_w, cell_h = w / n, h / n
  extent = (xs[0] - cell_w / 2, xs[-1] + cell_w / 2, ys[-1] + cell_h / 2, ys[0] - cell_h / 2)
  for ax, inside_only in ((axes[0], True), (axes[1], False)):
    _show_image(ax, image, target)
    shown = np.asarray(dice_map, np.float64)
    if inside_only:  # the paper shows clicks inside the lung
      on_target = target[np.clip(np.rint(ys), 0, h - 1).astype(int)][
          :, np.clip(np.rint(xs), 0, w - 1).astype(int)]
      shown = np.where(on_target, shown, np.nan)
    im = ax.imshow(shown, cmap="jet", vmin=0, vmax=1, alpha=0.55, extent=extent,
                   interpolation="nearest")
    if click is not None:
      ax.plot(click[0], click[1], "w+", ms=12, mew=2)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title("clicks inside the target" if inside_only else "clicks anywhere")
  fig.colorbar(im, ax=axes, fraction=0.03, label="Dice of SAM's mask")
  fig.suptitle(title or "Dice of SAM's mask for a click at each position")
  return save(fig, path)


def score_vs_dice(path, dice, sam_iou, score, r_iou, r_score):
  """Fig. 4 (b, c): (N,) true Dice at the initial clicks against SAM's IoU and the score."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
  for ax, values, name, r in ((axes[0], sam_iou, "SAM predicted IoU", r_iou),
                              (axes[1], score, "regressor score", r_score)):
    ax.scatter(values, dice, s=14, alpha=0.8)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel(name)
    ax.set_ylabel("true Dice")
    ax.set_title(f"{name}: r = {r:.2f} (n = {len(dice)})")
    ax.set_xlim(0, max(1.02, float(np.nanmax(values, initial=0.0)) + 0.02))  # IoU may pass 1
    ax.set_ylim(0, 1.02)
  fig.suptitle("Initial clicks: confidence vs true Dice")
  fig.tight_layout()
  return save(fig, path)


def _box(ax, box, color, lw=1.2, ls="-"):
  x0, y0, x1, y1 = box
  ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=lw, ls=ls))


def trajectory(path, image, target, prompts, scores, snapshot_steps, snapshot_masks,
               snapshot_dice, title=""):
  """Fig. 5. prompts (T, D): clicks (T, 2) or boxes (T, 4) (drawn as outlines, the path through
  their centres); scores (T,); snapshot masks (K, H, W) at steps (K,) with Dice (K,)."""
  prompts = np.asarray(prompts)
  boxes = prompts[:, :4] if prompts.shape[1] >= 4 else None
  clicks = 0.5 * (prompts[:, 0:2] + prompts[:, 2:4]) if prompts.shape[1] == 4 else prompts[:, -2:]
  k = len(snapshot_steps)
  fig = plt.figure(figsize=(3.2 * max(k, 2), 7.2), layout="constrained")
  grid = fig.add_gridspec(2, max(k, 2), height_ratios=(1.4, 1))
  ax = fig.add_subplot(grid[0, : max(k, 2) // 2])
  _show_image(ax, image, target)
  finite = np.isfinite(scores)
  ax.plot(clicks[:, 0], clicks[:, 1], "-", color="orange", lw=1)
  ax.scatter(clicks[finite, 0], clicks[finite, 1], c=np.nonzero(finite)[0], cmap="viridis",
             s=14, zorder=3)  # coloured by step
  ax.plot(*clicks[0], "c^", ms=9, label="initial")
  best = int(np.nanargmax(np.where(finite, scores, -np.inf)))
  ax.plot(*clicks[best], "r*", ms=12, label="best score")
  if boxes is not None:
    for step in snapshot_steps:
      _box(ax, boxes[step], "orange", lw=0.6, ls=":")
    _box(ax, boxes[0], "c")
    _box(ax, boxes[best], "r")
  ax.legend(fontsize=8, loc="lower right")
  ax.set_title("prompt trajectory")
  ax2 = fig.add_subplot(grid[0, max(k, 2) // 2:])
  ax2.plot(scores, "-o", ms=3)
  ax2.axvline(best, color="r", lw=0.8)
  ax2.set_xlabel("step")
  ax2.set_ylabel("regressor score")
  for j, (step, mask, d) in enumerate(zip(snapshot_steps, snapshot_masks, snapshot_dice)):
    axj = fig.add_subplot(grid[1, j])
    _show_image(axj, image)
    axj.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.45,
               interpolation="nearest")
    if np.any(target):
      axj.contour(target, levels=[0.5], colors="lime", linewidths=0.8)
    if boxes is not None:
      _box(axj, boxes[step], "c")
    else:
      axj.plot(*clicks[step], "c+", ms=10, mew=2)
    axj.set_title(f"step {step}: Dice {d:.3f}", fontsize=9)
  fig.suptitle(title or "Prompt evolution")
  return save(fig, path)


def initial_vs_evolved(path, dice_initial, dice_evolved, dice_safeguarded=None,
                       significant: float = 0.05):
  """Fig. 6: (N,) Dice at the initial vs the evolved (and safeguarded) prompt, with a zoom."""
  dice_initial = np.asarray(dice_initial)
  dice_evolved = np.asarray(dice_evolved)
  improved = int((dice_evolved > dice_initial).sum())
  big = int((dice_evolved - dice_initial > significant).sum())
  fig, axes = plt.subplots(1, 2, figsize=(10.5, 5))
  both = np.concatenate([dice_initial, dice_evolved])
  lo = max(0.0, min(float(np.quantile(both, 0.1)), 0.98) - 0.02)  # the top 90%
  hi = min(1.005, float(both.max()) + 0.02)
  for ax, limits in ((axes[0], (0, 1.02)), (axes[1], (lo, hi))):
    ax.scatter(dice_initial, dice_evolved, s=16, alpha=0.8, label="evolved (best score)")
    if dice_safeguarded is not None:
      ax.scatter(dice_initial, dice_safeguarded, s=22, facecolors="none", edgecolors="C3",
                 label="with safeguards")
    ax.plot([0, 1.02], [0, 1.02], "k--", lw=0.8)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel("Dice, initial prompt")
    ax.set_ylabel("Dice after evolution")
  axes[0].legend(fontsize=8, loc="lower right")
  axes[0].set_title(f"{improved} of {len(dice_initial)} improved, {big} by > {significant}")
  axes[1].set_title("zoom")
  fig.tight_layout()
  return save(fig, path)


def regressor_scatter(path: Path, pred: np.ndarray, atlas_pred: np.ndarray,
                   cands, by_kind: dict) -> None:
  """Predicted vs true Dice per candidate, regressor and atlas (Fig. 4(a))."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharex=True)
  kinds = sorted(set(cands.kinds.tolist()))
  cmap = plt.get_cmap("tab10")
  for ax, values, name in ((axes[0], pred, "regressor"),
                           (axes[1], atlas_pred, "atlas (no image)")):
    for k, kind in enumerate(kinds):
      sel = cands.kinds == kind
      ax.scatter(cands.dice[sel], values[sel], s=6, alpha=0.6,
                 color=cmap(k % 20), label=kind)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    key = "regressor" if values is pred else "atlas"
    stats_all = by_kind["all"][key]
    ax.set_title(f"{name}: r = {stats_all['pearson_r']:.3f}, "
                 f"MAE = {stats_all['mae']:.3f}  (n = {len(cands)})")
    ax.set_xlabel("true Dice")
    ax.set_ylabel("predicted Dice" if values is pred else "Dice vs mean mask")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
  axes[0].legend(fontsize=7, markerscale=2, loc="upper left")
  fig.tight_layout()
  save(fig, path)


def dice_vs_budget(path, budgets, curves: dict, bounds=(), title="", guard_suffix="+guard"):
  """Mean Dice against budget: budgets (K,) decoder evaluations per image; curves {method:
  (mean (K,), std (K,))} over draws, each a line with mean +- std shaded; `bounds` (methods
  that read the ground truth) dashed; '<method><guard_suffix>' dotted in its method's colour,
  unshaded."""
  budgets = np.asarray(budgets, np.float64)
  fig, ax = plt.subplots(figsize=(8.5, 5.2))
  cmap = plt.get_cmap("tab10")
  colors = {}
  for method in curves:
    if not method.endswith(guard_suffix):  # the first (the rough box) in black
      colors[method] = "black" if not colors else cmap((len(colors) - 1) % 10)
  for method, (mean, std) in curves.items():
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    guarded = method.endswith(guard_suffix)
    color = colors.get(method[:-len(guard_suffix)] if guarded else method, "grey")
    style = ":" if guarded else "--" if method in bounds else "-"
    ax.plot(budgets, mean, style, marker="o", ms=3.5, lw=1.6 if guarded else 1.3,
            color=color, label=method + (" (bound)" if method in bounds else ""))
    if not guarded:
      ax.fill_between(budgets, mean - std, mean + std, color=color, alpha=0.15, lw=0)
  if len(budgets) > 1 and budgets.min() > 0:
    ax.set_xscale("log", base=2)
  ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
  ax.set_xlabel("budget: decoder evaluations per image")
  ax.set_ylabel("mean Dice (shaded: +- std over draws)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.set_title(title or "Dice against budget", fontsize=10)
  fig.tight_layout()
  return save(fig, path)
