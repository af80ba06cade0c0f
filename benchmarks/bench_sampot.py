"""SAMPOT side by side: our jit/scan/vmap loop against PyTorch loops around the official SAM.

    python -m benchmarks.bench_sampot --out benchmarks/results/sampot_cpu.json
    python -m benchmarks.bench_sampot --tiny --out /tmp/sampot_tiny.json        # seconds (smoke)

One step: click -> prompt encoder + mask decoder -> sigmoid(slope * low-res logits) -> Dice
regressor score -> gradient with respect to the click -> Adam (step 10 px) -> clip. Same SAM
weights (official model at random init plus noise, ported) and the same regressor weights
(a Flax DiceRegressor of the paper's default config, copied into a PyTorch module) on both sides;
the first step's score and gradient are compared as a check.

- JAX, one step: a jitted step function called once per step (dispatch included).
- JAX, 100 steps: `sampot_jax.evolve.evolve_prompts` (one compiled program: lax.scan over the
  steps, vmap over the images), as users run it; it evaluates 101 clicks (the last update is
  dropped) and decodes 6 final masks per image at the original size, work the PyTorch loops
  below do not do.
- PyTorch, straightforward: each image on its own, a Python loop of official decoder calls,
  backward and torch.optim.Adam.
- PyTorch, hand-batched: the B clicks of B images in one tensor, one decoder call per step
  (`benchmarks/torch_side.py`).
- End to end: encode the B images, then 100 steps; images per second.

Images are 1024 x 1024 (no resizing), embeddings random, the regressor sees 256 x 256.
"""
import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch

from benchmarks import bench_sam
from benchmarks import common
from benchmarks import torch_side
from sampot_jax import evolve
from sampot_jax import regressor
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor
from ports import official as sam_official

SLOPE = 5.0
LEARNING_RATE = 10.0


def regressor_config() -> dict:
  """configs/train_regressor.py's model (configs are plain data: no TFDS or JAX import)."""
  from configs import train_regressor  # pylint: disable=g-import-not-at-top
  return train_regressor.get_config().model.to_dict()


def make_regressor(resolution: int, tiny: bool):
  model_config = regressor_config()
  model_config["resolution"] = resolution
  if tiny:
    model_config["features"] = (4, 8, 8, 8, 8)
  model = regressor.from_config(model_config)
  variables = regressor.init_variables(model, jax.random.key(0))
  return model, variables


def jax_step(params, config, frame, embedding, image_small, score_fn, variables, click0):
  """One SAMPOT step on one image as a jitted function, and its first optimiser state.

  step(click (2,), opt_state) -> (click, opt_state, score, grad).
  """
  score_iou = functools.partial(
      evolve.prompt_score, embedding=embedding, image_small=image_small, sam_params=params,
      score_variables=variables, sam_config=config, frame=frame, score_fn=score_fn, slope=SLOPE)
  tx = optax.adam(LEARNING_RATE)
  upper = float(config.img_size - 1)

  @jax.jit
  def step(click, opt_state):
    (score, _), grad = jax.value_and_grad(score_iou, has_aux=True)(click)
    updates, opt_state = tx.update(-grad, opt_state, click)
    return jnp.clip(click + updates, 0.0, upper), opt_state, score, grad

  return step, tx.init(click0)


class Setup:
  """Models, inputs and the functions under test for one batch size."""

  def __init__(self, official, params, config, model, variables, batch, device, seed=0):
    g = config.img_size // config.patch_size
    side = 4 * g  # SAM's low-res frame; the regressor sees the image at this size
    rng = np.random.default_rng(seed + batch)
    self.batch = batch
    self.config = ml_collections.FrozenConfigDict(config)
    self.params, self.official = params, official
    self.frame = predictor.frame_for((config.img_size, config.img_size), config.img_size)
    self.upper = float(config.img_size - 1)
    emb = rng.standard_normal((batch, g, g, config.prompt_embed_dim), dtype=np.float32)
    images = rng.uniform(0, 1, (batch, side, side)).astype(np.float32)
    clicks = rng.uniform(0.3, 0.7, (batch, 2)).astype(np.float32) * config.img_size
    self.emb_j, self.images_j, self.clicks_j = map(jnp.asarray, (emb, images, clicks))
    self.emb_t = torch.from_numpy(emb.transpose(0, 3, 1, 2).copy()).to(device)
    self.images_t = torch.from_numpy(images).to(device)
    self.clicks_t = torch.from_numpy(clicks).to(device)
    self.score_fn = regressor.make_scorer(model)
    self.variables = variables
    self.torch_reg = torch_side.TorchRegressor(model, variables).to(device)
    for p in list(self.torch_reg.parameters()) + list(official.parameters()):
      p.requires_grad_(False)

  # JAX -------------------------------------------------------------------------------------
  def jax_step_fn(self):
    """A jitted single step for image 0 (`jax_step`) and its first optimiser state."""
    return jax_step(self.params, self.config, self.frame, self.emb_j[0], self.images_j[0],
                    self.score_fn, self.variables, self.clicks_j[0])

  def jax_evolve(self, num_steps):
    settings = evolve.Settings(num_steps=num_steps, learning_rate=LEARNING_RATE, slope=SLOPE)
    return common.block(evolve.evolve_prompts(
        self.params, self.config, self.score_fn, self.variables, self.emb_j, self.frame,
        self.images_j, self.clicks_j, settings))

  # PyTorch ---------------------------------------------------------------------------------
  def torch_loop(self, num_steps, batched):
    fn = torch_side.sampot_batched if batched else torch_side.sampot_loop
    return fn(self.official, self.torch_reg, self.emb_t, self.images_t, self.clicks_t, num_steps,
              learning_rate=LEARNING_RATE, slope=SLOPE, upper=self.upper, sync=common.sync_torch)

  def check(self):
    """Score and click gradient of image 0 at its first click, JAX vs PyTorch."""
    step, state = self.jax_step_fn()
    _, _, score, grad = step(self.clicks_j[0], state)
    click = self.clicks_t[:1].clone().requires_grad_(True)
    low_res, _ = torch_side.decode_one(self.official, self.emb_t[:1], click[:, None],
                                       torch.ones(1, 1, dtype=torch.int, device=click.device))
    valid = self.emb_t.shape[-1] * 4
    score_t = self.torch_reg(self.images_t[:1],
                             torch.sigmoid(SLOPE * low_res[:, 0, :valid, :valid]))
    score_t.sum().backward()
    return dict(score=sam_official.errors(score_t.detach().cpu().numpy(), np.asarray(score)[None]),
                grad=sam_official.errors(click.grad[0].cpu().numpy(), np.asarray(grad)),
                score_value=float(score), grad_value=np.asarray(grad).tolist())


def encoder_times(official, params, config, batches, dtype, repeats, budget_s, device,
                  from_json=None, tiny_threads=0):
  """Seconds per image of each framework's encoder at each batch: {batch: (jax, torch, note)}."""
  out, known = {}, {}
  if from_json:
    for r in json.loads(open(from_json).read())["results"]:
      if r["kind"] == "encoder" and r["dtype"] == dtype:
        known[r["batch"]] = (r["jax_per_image_s"], r["torch_per_image_s"])
  for batch in sorted(set(batches) | {1}):
    if batch in known:
      out[batch] = (*known[batch], f"encoder figures from {from_json}")
      continue
    report = common.Report(None)
    bench_sam.bench_encoder(official, params, config, [batch], [dtype], repeats, budget_s, device,
                            "skip", report, tiny_threads=tiny_threads)
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
  p.add_argument("--variant", default="vit_b")
  p.add_argument("--batches", default="1,8,64" if gpu else "1,8")
  p.add_argument("--steps", type=int, default=100)
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
                 help="bench_sam JSON whose encoder figures to reuse instead of measuring them")
  p.add_argument("--skip-end-to-end", action="store_true")
  return p.parse_args(argv)


def main(argv=None):
  args, cores, device, env = common.start(argv, parse_args)
  config = sam_model.sam_config(args.variant, **(bench_sam.TINY if args.tiny else {}))
  steps = 3 if args.tiny else args.steps
  batches = [2] if args.tiny else common.ints(args.batches)
  report = common.Report(args.out, benchmark="sampot", variant=args.variant, tiny=args.tiny,
                         steps=steps, precision=args.precision, environment=env)
  official, params = bench_sam.build(config)
  official = official.to(device)
  model, variables = make_regressor(4 * (config.img_size // config.patch_size), args.tiny)
  report.header["regressor"] = {k: v for k, v in vars(model).items()
                                if k in regressor_config() and not k.startswith("_")}
  precision = functools.partial(bench_sam._precision, args.precision)  # pylint: disable=protected-access

  # One step, one image.
  s = Setup(official, params, config, model, variables, 1, device)
  with precision():
    check = s.check()
    step, state0 = s.jax_step_fn()
  click0 = s.clicks_j[0]

  def jax_one():
    with precision():
      return common.block(step(click0, state0))

  torch_one = lambda: s.torch_loop(1, batched=False)
  threads, probe = common.best_torch_threads(torch_one, cores)
  load0 = common.loadavg()
  stats = common.measure({"jax": jax_one, "torch": common.with_threads(torch_one, threads)},
                         args.repeats * 3, args.budget_s)
  jax_s, torch_s = stats["jax"]["median_s"], stats["torch"]["median_s"]
  report.add(dict(kind="step", batch=1, jax=stats["jax"], torch=stats["torch"],
                  ratio=common.ratio(torch_s, jax_s), check_vs_torch=check, torch_threads=threads,
                  torch_threads_probe_s=probe, loadavg_before=load0,
                  loadavg_after=common.loadavg(), memory=common.peak_memory()),
             dict(figure="one SAMPOT step, one image", jax=jax_s, torch=torch_s,
                  note=f"JAX: one jitted call per step; PyTorch {threads} thread(s)"))
  print(f"step: jax {jax_s:.4f} torch {torch_s:.4f} check {check}", file=sys.stderr, flush=True)

  # The straightforward PyTorch loop, per image (it runs the images one after another).
  loop_setup = Setup(official, params, config, model, variables, args.loop_images, device)
  loop = lambda: loop_setup.torch_loop(steps, batched=False)
  threads_loop, probe_loop = common.best_torch_threads(
      lambda: loop_setup.torch_loop(2, batched=False), cores, tries=2)
  load0 = common.loadavg()
  # Warmed by the thread probe (2 steps): a warm-up of the full loop would add minutes on a CPU.
  stats = common.measure({"torch_loop": common.with_threads(loop, threads_loop)}, args.repeats,
                         args.budget_s, warmed=("torch_loop",))
  loop_per_image = stats["torch_loop"]["median_s"] / args.loop_images
  report.add(dict(kind="torch_loop", images=args.loop_images, steps=steps, **stats,
                  per_image_s=loop_per_image, per_image_step_s=loop_per_image / steps,
                  torch_threads=threads_loop, torch_threads_probe_s=probe_loop,
                  loadavg_before=load0, loadavg_after=common.loadavg()))
  print(f"torch loop: {loop_per_image:.3f}s per image", file=sys.stderr, flush=True)

  # num_steps for B images: JAX evolve_prompts, PyTorch hand-batched.
  per_image = {}
  for batch in batches:
    s = Setup(official, params, config, model, variables, batch, device)

    def jax_evolve(s=s):
      with precision():
        return s.jax_evolve(steps)

    fns = {"jax": jax_evolve}
    threads_batched = None
    if batch > 1:
      batched = lambda s=s: s.torch_loop(steps, batched=True)
      threads_batched, probe_batched = common.best_torch_threads(
          lambda s=s: s.torch_loop(2, batched=True), cores, tries=2)
      fns["torch_batched"] = common.with_threads(batched, threads_batched)
    common.reset_peak_memory()
    load0 = common.loadavg()
    stats = common.measure(fns, args.repeats, args.budget_s, warmed=("torch_batched",))
    per_image[batch] = {k: v["median_s"] / batch for k, v in stats.items()}
    per_image[batch]["torch_loop"] = loop_per_image
    per_step = {k: v / steps for k, v in per_image[batch].items()}
    report.add(dict(kind="steps", batch=batch, steps=steps, **stats,
                    per_image_step_s=per_step,
                    ratio_vs_loop=common.ratio(per_step["torch_loop"], per_step["jax"]),
                    ratio_vs_batched=common.ratio(per_step.get("torch_batched"), per_step["jax"]),
                    torch_threads_batched=threads_batched, loadavg_before=load0,
                    loadavg_after=common.loadavg(), memory=common.peak_memory()),
               dict(figure=f"{steps} steps, batch {batch}, per image-step", jax=per_step["jax"],
                    torch=per_step["torch_loop"],
                    note=f"PyTorch straightforward loop ({threads_loop} thread(s)); JAX "
                         f"evolve_prompts, compile+first {stats['jax']['first_s']:.1f} s"),
               *([dict(figure=f"{steps} steps, batch {batch}, per image-step",
                       jax=per_step["jax"], torch=per_step["torch_batched"],
                       note=f"PyTorch hand-batched ({threads_batched} thread(s))")]
                 if batch > 1 else []))
    print(f"steps b{batch}: " + ", ".join(f"{k} {v:.4f}s" for k, v in per_step.items()) +
          " per image-step", file=sys.stderr, flush=True)

  if not args.skip_end_to_end:
    enc = encoder_times(official, params, config, batches, args.encoder_dtype, args.repeats,
                        args.budget_s * 2, device, args.encoder_from,
                        tiny_threads=cores if args.tiny else 0)
    for batch in batches:
      jax_enc, torch_enc, note = enc[batch]
      jax_ips = 1.0 / (jax_enc + per_image[batch]["jax"])
      loop_ips = 1.0 / (enc[1][1] + loop_per_image)
      batched_ips = (1.0 / (torch_enc + per_image[batch]["torch_batched"])
                     if "torch_batched" in per_image[batch] else None)
      rows = [dict(figure=f"end to end (encode {args.encoder_dtype} + {steps} steps), batch "
                          f"{batch}, images/s", unit="x", jax=jax_ips, torch=loop_ips,
                   ratio=jax_ips / loop_ips,
                   note="PyTorch straightforward (encoder at batch 1, then the loop)")]
      if batched_ips:
        rows.append(dict(figure=f"end to end, batch {batch}, images/s", unit="x", jax=jax_ips,
                         torch=batched_ips, ratio=jax_ips / batched_ips,
                         note="PyTorch hand-batched; " + note))
      report.add(dict(kind="end_to_end", batch=batch, steps=steps, dtype=args.encoder_dtype,
                      jax_images_per_s=jax_ips, torch_loop_images_per_s=loop_ips,
                      torch_batched_images_per_s=batched_ips,
                      encoder_per_image_s=dict(jax=jax_enc, torch=torch_enc,
                                               torch_batch1=enc[1][1]),
                      steps_per_image_s=per_image[batch], note=note), *rows)

  payload = report.save(done=True)
  print(common.markdown_table(report.rows))
  return payload


if __name__ == "__main__":
  main()
