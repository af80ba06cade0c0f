"""The PyTorch side of the benchmarks: the official SAM modules, used as a PyTorch user would.

- `decode_one`: the official prompt encoder + mask decoder, one image (as SamPredictor calls them).
- `decode_batched`: the same modules for B images with B embeddings in one call. The official
  MaskDecoder repeats a single embedding for every prompt (`repeat_interleave`), so batching
  images takes this hand-written version of its `predict_masks` (same submodules, no repeat).
- `TorchRegressor`: the Dice regressor (5 conv + BN + leaky ReLU, linear readout, sigmoid) with
  the weights of a Flax `DiceRegressor`, so that both frameworks score the same function.
- `sampot_loop` / `sampot_batched`: SAMPOT steps (prompt -> decoder -> sigmoid -> score ->
  backward -> Adam -> `constrain_`) one image at a time, and for B images in one tensor. The
  prompt is a click (B, 2) or a box (B, 4) = (x0, y0, x1, y1); both loops share one step
  (`_ascend`) and differ only in the decoder call.
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F


def _prompts(points, labels, boxes):
  return dict(points=None if points is None else (points, labels), boxes=boxes, masks=None)


def decode_one(sam, embedding, points=None, labels=None, multimask_output: bool = False,
               boxes=None):
  """embedding (1,C,h,w); points (P,N,2) in the model frame, labels (P,N), and/or boxes (P,4)
  -> low-res, iou."""
  sparse, dense = sam.prompt_encoder(**_prompts(points, labels, boxes))
  return sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                          multimask_output=multimask_output)


def decode_batched(sam, embeddings, points=None, labels=None, multimask_output: bool = False,
                   boxes=None):
  """embeddings (B,C,h,w), one prompt per image: points (B,N,2), labels (B,N) and/or boxes
  (B,4) -> (B,M,4h,4w), (B,M)."""
  decoder = sam.mask_decoder
  sparse, dense = sam.prompt_encoder(**_prompts(points, labels, boxes))
  tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
  tokens = torch.cat([tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
  src = embeddings + dense
  b, c, h, w = src.shape
  pos_src = sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
  hs, src = decoder.transformer(src, pos_src, tokens)
  mask_tokens_out = hs[:, 1:1 + decoder.num_mask_tokens]
  up = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
  hyper_in = torch.stack([mlp(mask_tokens_out[:, i])
                          for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
  masks = (hyper_in @ up.flatten(2)).view(b, -1, up.shape[2], up.shape[3])
  iou = decoder.iou_prediction_head(hs[:, 0])
  sl = slice(1, None) if multimask_output else slice(0, 1)
  return masks[:, sl], iou[:, sl]


class TorchRegressor(torch.nn.Module):
  """The Flax DiceRegressor in PyTorch (NCHW), built from its module and variables (eval mode).

  Covers `coord_channels` (x, y in [-1, 1] appended after image and mask, as
  `regressor.coordinate_channels`) and both readouts ('flatten': Flax's NHWC order; 'mean').
  Inputs of another size than `resolution` are resized as `regressor.prepare_inputs` does
  (jax.image.resize "linear", antialiased when shrinking = torch bilinear, antialias=True).
  """

  def __init__(self, model, variables):
    super().__init__()
    if model.readout not in ("flatten", "mean"):
      raise ValueError(f"readout={model.readout!r}: the torch regressor has 'flatten' and 'mean'")
    self.resolution = model.resolution
    self.negative_slope = model.negative_slope
    self.readout_kind = model.readout
    kernels = model.kernel_size
    kernels = (kernels,) * len(model.features) if isinstance(kernels, int) else tuple(kernels)
    params, stats = variables["params"], variables["batch_stats"]
    self.convs = torch.nn.ModuleList()
    self.bns = torch.nn.ModuleList()
    self.geometry = []
    in_ch = 4 if model.coord_channels else 2
    if model.coord_channels:
      axis = torch.linspace(-1.0, 1.0, model.resolution)
      y, x = torch.meshgrid(axis, axis, indexing="ij")
      self.register_buffer("coords", torch.stack([x, y])[None])
    else:
      self.coords = None
    for i, (feat, stride, k) in enumerate(zip(model.features, model.strides, kernels)):
      conv = torch.nn.Conv2d(in_ch, feat, k, stride=stride, bias=False)
      conv.weight.data = torch.from_numpy(
          np.asarray(params[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1).copy())
      bn = torch.nn.BatchNorm2d(feat, eps=1e-5)
      bn.weight.data = torch.from_numpy(np.asarray(params[f"BatchNorm_{i}"]["scale"]).copy())
      bn.bias.data = torch.from_numpy(np.asarray(params[f"BatchNorm_{i}"]["bias"]).copy())
      bn.running_mean.data = torch.from_numpy(np.asarray(stats[f"BatchNorm_{i}"]["mean"]).copy())
      bn.running_var.data = torch.from_numpy(np.asarray(stats[f"BatchNorm_{i}"]["var"]).copy())
      self.convs.append(conv)
      self.bns.append(bn)
      self.geometry.append((k, stride))
      in_ch = feat
    dense = params["Dense_0"]
    self.readout = torch.nn.Linear(dense["kernel"].shape[0], 1)
    self.readout.weight.data = torch.from_numpy(np.asarray(dense["kernel"]).T.copy())
    self.readout.bias.data = torch.from_numpy(np.asarray(dense["bias"]).copy())
    self.eval()

  def _resized(self, x):
    """(B, S, S) -> (B, 1, R, R), as jax.image.resize(..., "linear") (antialias=True)."""
    x = x[:, None]
    if x.shape[-1] == self.resolution and x.shape[-2] == self.resolution:
      return x
    return F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                         align_corners=False, antialias=True)

  def forward(self, image, mask):
    """image (B,S,S), mask (B,S',S') in [0, 1] -> (B,) predicted Dice."""
    x = torch.cat([self._resized(image), self._resized(mask)], dim=1)
    if self.coords is not None:
      x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)
    for conv, bn, (k, stride) in zip(self.convs, self.bns, self.geometry):
      size = x.shape[-1]
      pad = max((-(-size // stride) - 1) * stride + k - size, 0)  # XLA's SAME: extra pad after
      x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
      x = F.leaky_relu(bn(conv(x)), self.negative_slope)
    if self.readout_kind == "mean":
      x = x.mean(dim=(2, 3))
    else:
      x = x.permute(0, 2, 3, 1).flatten(1)  # Flax flattens NHWC
    return torch.sigmoid(self.readout(x))[:, 0]


def _soft_mask(low_res, valid: int, slope: float):
  return torch.sigmoid(slope * low_res[:, 0, :valid, :valid])


def prompt_kwargs(prompts, scale: float = 1.0) -> dict:
  """(B, D) prompts in original pixels -> the decoder's prompts in the model frame (x `scale`):
  clicks (B, 2) -> points (B, 1, 2), labels (B, 1) ones; boxes (B, 4) -> boxes (B, 4)."""
  if prompts.shape[-1] == 2:
    return dict(points=(prompts * scale)[:, None],
                labels=torch.ones(prompts.shape[0], 1, dtype=torch.int, device=prompts.device))
  if prompts.shape[-1] == 4:
    return dict(boxes=prompts * scale)
  raise ValueError(f"prompts of shape {tuple(prompts.shape)}: expected (B, 2) clicks or (B, 4) "
                   "boxes")


@torch.no_grad()
def constrain_(prompts, upper: float, min_box_size: float = 2.0):
  """In place, the PyTorch side's version of `predictor.constrain_prompts` (square images):
  every coordinate clamped into [0, upper]; a box is then re-ordered as (centre -+ half side)
  with each side at least `min_box_size` (a side that shrank below it, or whose corners
  crossed, is re-centred at that size, shifted inside the image near an edge)."""
  prompts.clamp_(0.0, upper)
  if prompts.shape[-1] == 4:
    lo, hi = prompts[:, :2], prompts[:, 2:]
    half = 0.5 * torch.clamp(hi - lo, min=min_box_size)
    mid = torch.minimum(torch.maximum(0.5 * (lo + hi), half), upper - half)
    prompts.copy_(torch.cat([mid - half, mid + half], dim=1))
  return prompts


def _ascend(decode, regressor, images_small, prompts, num_steps: int, *, valid: int,
            learning_rate: float = 10.0, slope: float = 5.0, scale: float = 1.0,
            upper: float = 1023.0, min_box_size: float = 2.0):
  """`num_steps` Adam ascent steps on (B, D) prompts; decode(**prompt_kwargs) -> low-res, iou.

  Adam is elementwise, so one optimiser over the (B, D) tensor moves each prompt as its own
  would. Returns the final prompts and the last scores (None without steps).
  """
  prompt = prompts.clone().requires_grad_(True)
  opt = torch.optim.Adam([prompt], lr=learning_rate)
  score = None
  for _ in range(num_steps):
    opt.zero_grad(set_to_none=True)
    low_res, _ = decode(**prompt_kwargs(prompt, scale))
    score = regressor(images_small, _soft_mask(low_res, valid, slope))
    (-score.sum()).backward()
    opt.step()
    constrain_(prompt, upper, min_box_size)
  return prompt.detach(), None if score is None else score.detach()


def sampot_loop(sam, regressor, embeddings, images_small, prompts, num_steps: int, *,
                sync=lambda: None, **settings):
  """The straightforward loop: each image on its own, `num_steps` Adam steps on its prompt.

  embeddings (B,C,h,w); images_small (B,R,R); prompts (B,2) clicks or (B,4) boxes in original
  pixels; `settings` (`_ascend`): learning_rate, slope, scale (original pixels -> model frame),
  upper, min_box_size. Returns the final prompts (B,D) and last scores (B,).
  """
  valid = embeddings.shape[-1] * 4
  out = [_ascend(functools.partial(decode_one, sam, embeddings[i:i + 1]), regressor,
                 images_small[i:i + 1], prompts[i:i + 1], num_steps, valid=valid, **settings)
         for i in range(embeddings.shape[0])]
  sync()
  return torch.cat([p for p, _ in out]), torch.cat([s for _, s in out])


def sampot_batched(sam, regressor, embeddings, images_small, prompts, num_steps: int, *,
                   sync=lambda: None, **settings):
  """The hand-batched loop: the B prompts (clicks or boxes) in one tensor, one decoder call per
  step for all images (`decode_batched`); arguments as `sampot_loop`."""
  out = _ascend(functools.partial(decode_batched, sam, embeddings), regressor, images_small,
                prompts, num_steps, valid=embeddings.shape[-1] * 4, **settings)
  sync()
  return out
