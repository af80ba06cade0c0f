"""Which method fixes a rough box best for the decoder work it spends (task 'compare').

    python main.py --config configs/compare.py --workdir runs/compare --config.max_images=61

Every method of sampot.peers runs on the same embeddings and the same rough boxes: for each box
jitter J of config.jitters and each of config.draws draws, the evaluate task's draw
(prompts.rough_boxes(bounding_boxes(targets), J, default_rng(box_seed + draw))), at each budget
of config.budgets decoder evaluations per image. The cost of an Adam step in decoder evaluations
is measured first, in this run (peers.measure_step_cost), unless config.step_cost gives it.
Each method's first call at a budget compiles outside the timing.

The safeguard. For each method of config.guarded, "<method>+guard" is that method's move kept
only where config.safeguards' rules pass (sampot.safeguards: the score rose by more than
min_score_gain, the IoU head agrees, the masks overlap...), else the rough box. It spends no
decoder evaluation (the method saw these scores when it ranked the boxes); the scores it reads
are computed again after the method, outside its seconds. Outputs in the workdir:

  per_image.csv    one row per image x draw x J x method x budget: id, draw, jitter, method,
                   budget, decoder_evals_used, seconds (per image), dice, the rough box
                   (rough_x0..) and the box kept (kept_x0..); SAMPOT's score of both boxes'
                   masks and its two parts (score_, regressor_, iou_ rough / kept; empty where
                   the mask kept is not its box's own: multimask, SAM-U), the Dice between the
                   kept mask and the rough box's (overlap_rough), and whether the safeguard
                   accepted the move (accepted: 1 for unguarded methods)
  summary.json     per J, method and budget: mean and std over draws of the mean Dice, of the
                   shares improved and degraded by > 0.02 (against the rough box of the same
                   draw), of the seconds per image; the evaluations used; the step cost; config
  tables.md        a table per J (Dice, improved / degraded, seconds)
  dice_vs_budget_J<J>.png   Dice against budget, a line per method, the spread shaded
"""
import dataclasses
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sampot_jax import errors
from sampot_jax.report import figures
from sampot_jax.runtime import settings as settings_lib
from sampot_jax.runtime import sharding
from sampot_jax.sampot import evolve
from sampot_jax.sampot import metrics
from sampot_jax.sampot import peers
from sampot_jax.sampot import prompts as prompt_lib
from sampot_jax.sampot import safeguards
from sampot_jax.storage import files
from sampot_jax.tasks import common

DEGRADED = 0.02  # a Dice loss larger than this counts as a degradation (as the evaluate task)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the run compares: budgets (increasing ints >= 1), jitters, draws, methods (initial
  first: every other is judged against it), the peers' settings, the methods also reported
  under the safeguard `guard` (settings.Safeguards)."""
  budgets: tuple[int, ...]
  jitters: tuple[float, ...]
  draws: int
  methods: tuple[str, ...]
  peers: peers.Settings
  guarded: tuple[str, ...] = ()
  guard: settings_lib.Safeguards = settings_lib.Safeguards()

  @property
  def reported(self) -> tuple[str, ...]:
    """The methods, then each guarded one as '<method>+guard'."""
    return self.methods + tuple(guarded_name(m) for m in self.guarded)


def guarded_name(method: str) -> str:
  return f"{method}+guard"


def plan_from_config(config) -> Plan:
  """config.budgets, jitters, draws, methods and peers, checked (errors name the field)."""
  budgets = tuple(config.budgets)
  if not budgets or any(int(b) != b or b < 1 for b in budgets) or list(budgets) != sorted(
      set(budgets)):
    raise errors.ConfigError(f"config.budgets={budgets}; give increasing whole numbers of "
                             "decoder evaluations >= 1, e.g. (1, 8, 16, 32, 64).")
  jitters = tuple(float(j) for j in config.jitters)
  if not jitters or any(j <= 0 for j in jitters) or len(set(jitters)) != len(jitters):
    raise errors.ConfigError(f"config.jitters={tuple(config.jitters)}; give distinct box "
                             "jitters > 0 (fractions of the box's size), e.g. (0.05, 0.1).")
  if config.draws < 1:
    raise errors.ConfigError(f"config.draws={config.draws}; it must be >= 1.")
  unknown = sorted(set(config.methods) - set(peers.METHODS))
  if unknown:
    raise errors.ConfigError(f"config.methods names {unknown}; known: {list(peers.METHODS)}.")
  methods = ("initial",) + tuple(m for m in dict.fromkeys(config.methods) if m != "initial")
  guarded = tuple(dict.fromkeys(config.guarded))
  bad = sorted(set(guarded) - set(methods) | set(guarded) & set(peers.NOT_BOX_MASKS + ("initial",)))
  if bad:
    raise errors.ConfigError(
        f"config.guarded names {bad}; guard only methods of config.methods that move the box "
        f"and keep its mask (not initial, {', '.join(peers.NOT_BOX_MASKS)}).")
  return Plan(tuple(int(b) for b in budgets), jitters, int(config.draws), methods,
              settings_lib.typed(peers.Settings, config.peers, "config.peers"), guarded,
              settings_lib.typed(settings_lib.Safeguards, config.safeguards,
                                 "config.safeguards"))


# Per image and method: SAMPOT's score of the rough and the kept box's masks, its parts, and
# the kept mask's Dice with the rough box's mask (per_image.csv's columns).
PARTS = ("score_rough", "score_kept", "regressor_rough", "regressor_kept", "iou_rough",
         "iou_kept", "overlap_rough", "accepted")


@dataclasses.dataclass
class Results:
  """Per (method, budget) of plan.reported: dice, evals (draws, J, N); seconds (draws, J) per
  image; kept boxes (draws, J, N, 4); parts {PARTS name: (draws, J, N)}. rough: (draws, J, N, 4)
  the rough boxes."""
  dice: dict
  evals: dict
  seconds: dict
  kept: dict
  rough: np.ndarray
  parts: dict = dataclasses.field(default_factory=dict)


def judge_moves(sam, scorer, embeddings, frame, images_small, rough, choice: peers.Choice,
                rough_masks, setup: peers.Setup, guard, box_mask: bool) -> dict:
  """PARTS of one batch's moves (B,) each; "accepted": the guard's verdict (settings.Safeguards;
  all True for no rules). box_mask False: the kept mask is not its box's, the scores are NaN."""
  masks = np.asarray(choice.masks)
  b = masks.shape[0]
  out = {"overlap_rough": metrics.dice_rows(masks, rough_masks)}
  if box_mask:
    both = np.stack([np.asarray(rough, np.float32), np.asarray(choice.boxes, np.float32)], 1)
    parts = peers.score_parts(sam, scorer, embeddings, frame, images_small, both, setup.evolve,
                              setup.peers.chunk)
    for name, values in parts.items():
      out[f"{name}_rough"], out[f"{name}_kept"] = values[:, 0], values[:, 1]
  else:
    out.update({name: np.full(b, np.nan) for name in PARTS[:6]})
  passed = safeguards.check(guard, out["score_rough"], out["score_kept"], rough_masks, masks,
                            np.asarray(choice.boxes), out["iou_rough"], out["iou_kept"])
  out["accepted"] = safeguards.accept(passed, b)
  return out


def run_methods(sam, scorer, embeddings, frame, images_small, targets, gt_boxes, plan: Plan,
                setup: peers.Setup, config) -> Results:
  """Every method at every budget on every draw and jitter, batch by batch (one device)."""
  n = len(targets)
  shape = (plan.draws, len(plan.jitters), n)
  keys = [(m, b) for m in plan.reported for b in plan.budgets]
  res = Results({k: np.zeros(shape) for k in keys}, {k: np.zeros(shape) for k in keys},
                {k: np.zeros(shape[:2]) for k in keys},
                {k: np.zeros(shape + (4,), np.float32) for k in keys},
                np.zeros(shape + (4,), np.float32),
                {k: {p: np.zeros(shape) for p in PARTS} for k in keys})
  batch = min(config.batch_size, n)
  key = jax.random.key(config.seed)
  compiled = set()
  combos = [(d, j) for d in range(plan.draws) for j in range(len(plan.jitters))]
  for d, j in tqdm(combos, desc="draws x jitters", unit="set"):
    rough = prompt_lib.rough_boxes(gt_boxes, plan.jitters[j],
                                   np.random.default_rng(config.box_seed + d),
                                   images_small.shape[1:3])
    res.rough[d, j] = rough
    for start in tqdm(range(0, n, batch), desc=f"draw {d}, J {plan.jitters[j]:g}: batches",
                      unit="batch", leave=False):
      rows = slice(start, start + batch)
      host, m = sharding.pad_batch(dict(emb=embeddings[rows], small=images_small[rows],
                                        targets=targets[rows], boxes=rough[rows]), batch)
      dev = {k: jnp.asarray(v) for k, v in host.items()}
      rough_masks = None  # the rough boxes' masks: the initial method's, which runs first
      for i, method in enumerate(plan.methods):
        fn = peers.METHODS[method]
        for budget in plan.budgets[:1] if method in peers.FIXED else plan.budgets:
          rng = key
          for part in (d, j, start, i, budget):
            rng = jax.random.fold_in(rng, part)
          call = lambda: fn(sam, scorer, dev["emb"], frame, dev["small"], host["boxes"],  # pylint: disable=cell-var-from-loop
                            budget, rng, setup, targets=dev["targets"])
          if (method, budget) not in compiled:  # compile outside the timing
            jax.block_until_ready(call().masks)
            compiled.add((method, budget))
          t0 = time.perf_counter()
          choice = call()
          masks = np.asarray(choice.masks)[:m]
          seconds = time.perf_counter() - t0
          dice = metrics.dice_rows(masks, targets[rows])
          kept = np.asarray(choice.boxes, np.float32)[:m]
          if choice.evals > budget + 1e-6:
            raise AssertionError(f"{method} used {choice.evals} > {budget} evaluations.")
          if rough_masks is None:
            rough_masks = np.asarray(choice.masks)
          parts = judge_moves(sam, scorer, dev["emb"], frame, dev["small"], host["boxes"], choice,
                              rough_masks, setup, plan.guard, method not in peers.NOT_BOX_MASKS)
          guarded = method in plan.guarded
          accepted = parts["accepted"][:m]
          if guarded:
            gdice = np.where(accepted, dice, res.dice["initial", budget][d, j, rows])
            gkept = np.where(accepted[:, None], kept, host["boxes"][:m])
            gparts = dict(parts)
          parts["accepted"] = np.ones_like(parts["accepted"])  # the method keeps every move
          for b in plan.budgets if method in peers.FIXED else (budget,):
            res.dice[method, b][d, j, rows] = dice
            res.evals[method, b][d, j, rows] = choice.evals
            res.seconds[method, b][d, j] += seconds / n
            res.kept[method, b][d, j, rows] = kept
            for name, values in parts.items():
              res.parts[method, b][name][d, j, rows] = values[:m]
            if guarded:
              g = guarded_name(method), b
              res.dice[g][d, j, rows] = gdice
              res.evals[g][d, j, rows] = choice.evals
              res.seconds[g][d, j] += seconds / n
              res.kept[g][d, j, rows] = gkept
              for name, values in gparts.items():
                res.parts[g][name][d, j, rows] = values[:m]
  return res


def _spread(values) -> dict:
  """Mean and std over draws (sample std, 0 for one draw) and the per-draw values."""
  values = np.asarray(values, np.float64)
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return {"mean": float(np.mean(values)), "std": std, "per_draw": values.tolist()}


def summarize(res: Results, plan: Plan) -> dict:
  """{str(J): {method: {str(budget): {mean_dice, improved_share, degraded_share,
  seconds_per_image: _spread; decoder_evals_used: mean and max}}}}."""
  out = {}
  for j, jitter in enumerate(plan.jitters):
    per_j = out[f"{jitter:g}"] = {}
    for method in plan.reported:
      per_m = per_j[method] = {}
      for budget in plan.budgets:
        dice = res.dice[method, budget][:, j]  # (draws, N)
        base = res.dice["initial", budget][:, j]
        evals = res.evals[method, budget][:, j]
        per_m[str(budget)] = {
            "mean_dice": _spread(dice.mean(1)),
            "improved_share": _spread((dice > base).mean(1)),
            "degraded_share": _spread((dice < base - DEGRADED).mean(1)),
            "seconds_per_image": _spread(res.seconds[method, budget][:, j]),
            "accepted_share": _spread(res.parts[method, budget]["accepted"][:, j].mean(1)),
            "decoder_evals_used": {"mean": float(evals.mean()), "max": float(evals.max())}}
  return out


def per_image_rows(ids, res: Results, plan: Plan) -> list[dict]:
  rows = []
  for d in range(plan.draws):
    for j, jitter in enumerate(plan.jitters):
      for method in plan.reported:
        for budget in plan.budgets:
          key = (method, budget)
          for i, sid in enumerate(ids):
            row = {"id": sid, "draw": d, "jitter": jitter, "method": method, "budget": budget,
                   "decoder_evals_used": float(res.evals[key][d, j, i]),
                   "seconds": float(res.seconds[key][d, j]),
                   "dice": float(res.dice[key][d, j, i])}
            for name, box in (("rough", res.rough[d, j, i]), ("kept", res.kept[key][d, j, i])):
              row.update({f"{name}_{f}": float(v) for f, v in zip(("x0", "y0", "x1", "y1"), box)})
            for name in PARTS:
              value = float(res.parts[key][name][d, j, i])
              row[name] = "" if np.isnan(value) else value
            row["accepted"] = int(row["accepted"])
            rows.append(row)
  return rows


def tables(summary: dict, plan: Plan, num_images: int) -> str:
  """tables.md: per J, Dice, improved / degraded shares and seconds per image by method and
  budget (mean +- std over draws)."""
  cost = summary["step_cost"]
  head = "| method | " + " | ".join(f"B = {b}" for b in plan.budgets) + " |\n"
  rule = "|---|" + "---|" * len(plan.budgets) + "\n"
  text = [f"# Rough boxes repaired at matched budgets\n\n{num_images} images, {plan.draws} "
          f"draw(s) of rough boxes per jitter J; budget B = decoder evaluations per image; an "
          f"Adam step costs {cost['step_cost']:.2f} evaluations (measured ratio "
          f"{cost['ratio']:.2f}). Cells: mean over draws +- std over draws.\n"]
  fmt = lambda s, f: f"{s['mean']:{f}} ± {s['std']:{f}}"
  for jitter, per_j in summary["results"].items():
    text.append(f"\n## J = {jitter}\n\nMean Dice\n\n" + head + rule)
    for method in plan.reported:
      text.append(f"| {method} | " + " | ".join(
          fmt(per_j[method][str(b)]["mean_dice"], ".3f") for b in plan.budgets) + " |\n")
    text.append(f"\nShare improved / degraded by > {DEGRADED} (vs the rough box)\n\n" + head
                + rule)
    for method in plan.reported[1:]:
      text.append(f"| {method} | " + " | ".join(
          f"{per_j[method][str(b)]['improved_share']['mean']:.2f} / "
          f"{per_j[method][str(b)]['degraded_share']['mean']:.2f}" for b in plan.budgets)
          + " |\n")
    if plan.guarded:
      text.append(f"\nShare of moves the safeguard accepted ({', '.join(plan.guard.rules)})\n\n"
                  + head + rule)
      for method in plan.reported[len(plan.methods):]:
        text.append(f"| {method} | " + " | ".join(
            fmt(per_j[method][str(b)]["accepted_share"], ".2f") for b in plan.budgets) + " |\n")
    text.append("\nSeconds per image\n\n" + head + rule)
    for method in plan.reported:
      text.append(f"| {method} | " + " | ".join(
          fmt(per_j[method][str(b)]["seconds_per_image"], ".3f") for b in plan.budgets) + " |\n")
  return "".join(text)


def draw_plots(workdir, summary: dict, plan: Plan) -> list[str]:
  written = []
  for jitter, per_j in summary["results"].items():
    curves = {m: ([per_j[m][str(b)]["mean_dice"]["mean"] for b in plan.budgets],
                  [per_j[m][str(b)]["mean_dice"]["std"] for b in plan.budgets])
              for m in plan.reported}
    name = f"dice_vs_budget_J{jitter}.png"
    figures.dice_vs_budget(workdir / name, plan.budgets, curves, bounds=peers.BOUNDS,
                           title=f"Rough boxes at J = {jitter}: Dice against decoder budget "
                                 f"({plan.draws} draw(s))")
    written.append(name)
  return written


def run(config, workdir) -> dict:
  """Task 'compare': every method at every budget, jitter and draw; returns the summary."""
  workdir = common.start(config, workdir)
  plan = plan_from_config(config)
  settings = evolve.settings_from_config(config.evolve)
  files.write_json(workdir / "config.json", config.to_dict())
  seconds = {}
  t0 = time.time()
  sam = common.load_sam(config)
  scorer = common.load_scorer(config, check_target=True)
  ids, images, targets, _ = common.split_images(config)
  gt_boxes = prompt_lib.bounding_boxes(targets, ids)
  seconds["load"] = time.time() - t0
  t0 = time.time()
  embeddings, frame, encoded = common.embed(config, sam, images)
  seconds["embeddings"] = time.time() - t0
  small = images.astype(np.float32) / 255.0
  t0 = time.time()
  if config.step_cost > 0:
    cost = {"ratio": float(config.step_cost), "step_cost": max(float(config.step_cost), 1.0),
            "measured": False}
  else:  # the first batch's rough boxes (first draw, first jitter)
    rows = slice(0, min(config.batch_size, len(ids)))
    probe = prompt_lib.rough_boxes(gt_boxes[rows], plan.jitters[0],
                                   np.random.default_rng(config.box_seed), images.shape[1:3])
    cost = peers.measure_step_cost(sam, scorer, jnp.asarray(embeddings[rows]), frame,
                                   jnp.asarray(small[rows]), probe, settings, plan.peers.chunk,
                                   probes=config.step_cost_probes)
    cost["measured"] = True
  seconds["step_cost"] = time.time() - t0
  logging.info("An Adam step costs %.2f forward decoder evaluations (%s).", cost["ratio"],
               "measured" if cost["measured"] else "config.step_cost")
  setup = peers.Setup(settings, cost["step_cost"], plan.peers)
  t0 = time.time()
  res = run_methods(sam, scorer, embeddings, frame, small, targets, gt_boxes, plan, setup, config)
  seconds["methods"] = time.time() - t0
  summary = {"num_images": len(ids), "split": config.split, "budgets": list(plan.budgets),
             "jitters": list(plan.jitters), "draws": plan.draws, "methods": list(plan.methods),
             "guarded": list(plan.guarded), "safeguards": dataclasses.asdict(plan.guard),
             "step_cost": cost, "results": summarize(res, plan),
             "embeddings_encoded": encoded, "num_devices": jax.device_count(),
             "seconds": seconds, "config": config.to_dict()}
  common.write_csv(workdir / "per_image.csv", per_image_rows(ids, res, plan))
  files.write_text(workdir / "tables.md", tables(summary, plan, len(ids)))
  summary["figures"] = draw_plots(workdir, summary, plan)
  files.write_json(workdir / "summary.json", summary)
  logging.info("%d images x %d draws x %d jitters x %d methods x %d budgets compared in %.0f s. "
               "Report in %s", len(ids), plan.draws, len(plan.jitters), len(plan.methods),
               len(plan.budgets), seconds["methods"], workdir)
  return summary
