"""SAMPOT and its peers at matched budgets of decoder work, on the Montgomery test split.

    python main.py --config configs/compare.py --workdir runs/compare --config.max_images=61

"Which method fixes my rough box best for the seconds I can spend?" Every method of
sampot_jax/sampot/peers.py (the rough box, the multimask choice, SAM-U, MedSAM-U, SAIF-style
stability, random search, CMA-ES, SAMPOT, a random-search-then-Adam hybrid, and the bounds:
the true-Dice ascent and the ground-truth box) runs on the same embeddings and the same rough
boxes, at each budget of decoder evaluations per image; an Adam step is counted by its cost
measured in the run. The models and SAMPOT's settings are lite_medsam_evaluate's (LiteMedSAM,
the shipped left-lung regressor, blended with the IoU head at 0.3); SAMPOT runs without the
population of that config's default (the hybrid is that default). Each method of
config.guarded is also reported under config.safeguards. docs/compare.md.
"""
import ml_collections

from configs import lite_medsam_evaluate


def get_config():
  config = lite_medsam_evaluate.get_config()
  config.task = "compare"
  # The evaluate task's single prompt, safeguards, figures, baselines and many-process settings
  # do not apply: the prompts are the rough boxes drawn below, the methods those listed.
  for key in ("prompt", "prompts_file", "box_jitter", "figures", "baselines", "distributed"):
    del config[key]
  # Images per compiled call. Memory grows with it: at 8 the Montgomery run passed 20 GB and
  # was killed on a 24 GB machine; at 2 it peaked at ~3.2 GB (2-core AMD EPYC, 2026-12-06).
  config.batch_size = 2
  config.budgets = (1, 8, 16, 32, 64)  # decoder evaluations per image
  config.jitters = (0.05, 0.10, 0.15, 0.20)  # rough boxes: each coordinate moved up to J x size
  config.draws = 3  # independent draws of the rough boxes: default_rng(box_seed + draw)
  config.methods = ("initial", "multimask", "sam_u", "medsam_u", "saif", "random_search",
                    "cma_es", "sampot", "hybrid", "true_dice_ascent", "gt_box")
  # 0: an Adam step's cost in forward evaluations is measured in the run (on the first batch,
  # step_cost_probes boxes per image); > 0: this ratio instead (e.g. another run's).
  config.step_cost = 0.0
  config.step_cost_probes = 8
  # Each of these is also reported as '<method>+guard': its move kept only where the rules of
  # config.safeguards pass (sampot/safeguards.py), else the rough box.
  config.guarded = ("random_search", "cma_es", "sampot", "hybrid")
  config.safeguards.rules = ("score_gain", "iou_agrees")
  config.safeguards.min_score_gain = 0.0
  config.safeguards.max_iou_drop = 0.02
  # sampot_jax.sampot.peers.Settings (the same defaults; docs/compare.md says why).
  config.peers = ml_collections.ConfigDict(dict(
      sam_u_jitter=0.1, medsam_u_sigma=0.05, saif_jitter=0.1, saif_delta=1.0,
      search_jitter=0.1, cma_sigma=0.05, cma_popsize=8, map_side=128, chunk=16))
  return config
