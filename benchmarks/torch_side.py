"""The PyTorch side of the benchmarks: the official SAM modules, used as a PyTorch user would.

- `decode_one`: the official prompt encoder + mask decoder, one image (as SamPredictor calls them).
- `decode_batched`: the same modules for B images with B embeddings in one call. The official
  MaskDecoder repeats a single embedding for every prompt (`repeat_interleave`), so batching
  images takes this hand-written version of its `predict_masks` (same submodules, no repeat).
- `TorchRegressor`: the Dice regressor (5 conv + BN + leaky ReLU, linear readout, sigmoid) with
  the weights of a Flax `DiceRegressor`, so that both frameworks score the same function.
- `sampot_loop` / `sampot_batched`: SAMPOT steps (click -> decoder -> sigmoid -> score ->
  backward -> Adam) one image at a time, and for B images in one tensor.
"""
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
  """The Flax DiceRegressor in PyTorch (NCHW), built from its module and variables (eval mode)."""

  def __init__(self, model, variables):
    super().__init__()
    if model.readout != "flatten" or model.coord_channels:
      raise ValueError("the benchmark's torch regressor covers readout='flatten' without "
                       "coordinate channels (the paper's default config)")
    self.resolution = model.resolution
    self.negative_slope = model.negative_slope
    kernels = model.kernel_size
    kernels = (kernels,) * len(model.features) if isinstance(kernels, int) else tuple(kernels)
    params, stats = variables["params"], variables["batch_stats"]
    self.convs = torch.nn.ModuleList()
    self.bns = torch.nn.ModuleList()
    self.geometry = []
    in_ch = 2
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
    side = model.resolution
    for _, stride in self.geometry:
      side = -(-side // stride)
    self.side, self.channels = side, in_ch
    self.readout = torch.nn.Linear(dense["kernel"].shape[0], 1)
    self.readout.weight.data = torch.from_numpy(np.asarray(dense["kernel"]).T.copy())
    self.readout.bias.data = torch.from_numpy(np.asarray(dense["bias"]).copy())
    self.eval()

  def forward(self, image, mask):
    """image, mask (B,R,R) in [0, 1] at the model resolution -> (B,) predicted Dice."""
    x = torch.stack([image, mask], dim=1)
    for conv, bn, (k, stride) in zip(self.convs, self.bns, self.geometry):
      size = x.shape[-1]
      pad = max((-(-size // stride) - 1) * stride + k - size, 0)  # XLA's SAME: extra pad after
      x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
      x = F.leaky_relu(bn(conv(x)), self.negative_slope)
    x = x.permute(0, 2, 3, 1).flatten(1)  # Flax flattens NHWC
    return torch.sigmoid(self.readout(x))[:, 0]


def _soft_mask(low_res, valid: int, slope: float):
  return torch.sigmoid(slope * low_res[:, 0, :valid, :valid])


def sampot_loop(sam, regressor, embeddings, images_small, clicks, num_steps: int, *,
                learning_rate: float = 10.0, slope: float = 5.0, scale: float = 1.0,
                upper: float = 1023.0, sync=lambda: None):
  """The straightforward loop: each image on its own, `num_steps` Adam steps on its click.

  embeddings (B,C,h,w); images_small (B,R,R); clicks (B,2) original pixels; `scale` maps them
  into the 1024 frame. Returns the final clicks (B,2) and last scores (B,).
  """
  finals, scores = [], []
  valid = embeddings.shape[-1] * 4
  label = torch.ones(1, 1, dtype=torch.int, device=embeddings.device)
  for i in range(embeddings.shape[0]):
    click = clicks[i:i + 1].clone().requires_grad_(True)
    opt = torch.optim.Adam([click], lr=learning_rate)
    for _ in range(num_steps):
      opt.zero_grad(set_to_none=True)
      low_res, _ = decode_one(sam, embeddings[i:i + 1], (click * scale)[:, None], label)
      score = regressor(images_small[i:i + 1], _soft_mask(low_res, valid, slope))
      (-score.sum()).backward()
      opt.step()
      with torch.no_grad():
        click.clamp_(0.0, upper)
    finals.append(click.detach())
    scores.append(score.detach())
  sync()
  return torch.cat(finals), torch.cat(scores)


def sampot_batched(sam, regressor, embeddings, images_small, clicks, num_steps: int, *,
                   learning_rate: float = 10.0, slope: float = 5.0, scale: float = 1.0,
                   upper: float = 1023.0, sync=lambda: None):
  """The hand-batched loop: B clicks in one tensor, one decoder call per step for all images.

  Adam is elementwise, so one optimiser over the (B,2) tensor moves each click as its own would.
  """
  valid = embeddings.shape[-1] * 4
  labels = torch.ones(embeddings.shape[0], 1, dtype=torch.int, device=embeddings.device)
  click = clicks.clone().requires_grad_(True)
  opt = torch.optim.Adam([click], lr=learning_rate)
  for _ in range(num_steps):
    opt.zero_grad(set_to_none=True)
    low_res, _ = decode_batched(sam, embeddings, (click * scale)[:, None], labels)
    score = regressor(images_small, _soft_mask(low_res, valid, slope))
    (-score.sum()).backward()
    opt.step()
    with torch.no_grad():
      click.clamp_(0.0, upper)
  sync()
  return click.detach(), score.detach()
