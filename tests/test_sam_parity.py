"""Parity of the Flax SAM with the official PyTorch code on tiny models (every path, seconds).

Tolerances: float32 on CPU, the two frameworks sum in different orders; measured errors on these
models are 1e-6 to 5e-6 absolute on outputs of magnitude 1-5 (about 1e-6 relative). The bound
1e-4 relative leaves room for other BLAS builds and stays far below any real mistake (a wrong
transpose, missing bias or dropped term gives errors of order 1).
"""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from reference import official as sam_official
from sampot_jax.sam import model as sam_model

pytestmark = pytest.mark.optimized  # compares with the official PyTorch SAM

REL_TOL = 1e-4

# Windowed blocks on a grid of 8 with window 3 need padding (8 -> 9); block 1 is global.
TINY = dict(img_size=128, embed_dim=32, depth=3, num_heads=2, global_attn_indexes=(1,),
            window_size=3, prompt_embed_dim=32, transformer_mlp_dim=64, iou_head_hidden_dim=32)


def tiny_config(**overrides):
  return sam_model.sam_config("vit_b", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  config = tiny_config()
  official = sam_official.official_sam(config, seed=1)
  params = sam_official.ported_params(official, config, tmp_path_factory.mktemp("tiny"))
  return config, official, params


def check(name, reference, ours, record_figure):
  err = sam_official.errors(reference, ours)
  record_figure(name, err)
  assert np.asarray(ours).shape == np.asarray(reference).shape
  assert err["max_rel"] < REL_TOL, (name, err)


@pytest.mark.parametrize("overrides", [
    dict(),  # windows padded, one global block
    dict(img_size=96, window_size=2, global_attn_indexes=(0, 2)),  # no padding needed
    dict(img_size=160, window_size=4, depth=2, global_attn_indexes=()),  # 10 -> 12, windows only
])
def test_image_encoder_matches_official(overrides, tmp_path, record_figure):
  config = tiny_config(**overrides)
  official = sam_official.official_sam(config, seed=2)
  params = sam_official.ported_params(official, config, tmp_path)
  x = torch.randn(2, 3, config.img_size, config.img_size, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    expected = official.image_encoder(x).numpy().transpose(0, 2, 3, 1)
  ours = sam_model.encode(params, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), config)
  check(f"tiny_encoder{overrides}", expected, ours, record_figure)


PROMPTS = {
    "points": dict(points=True),
    "points+boxes": dict(points=True, boxes=True),
    "boxes": dict(boxes=True),
    "mask": dict(masks=True),
    "points+mask": dict(points=True, masks=True),
    "points+boxes+mask": dict(points=True, boxes=True, masks=True),
}


def _prompts(config, batch=3):
  g = torch.Generator().manual_seed(3)
  n = config.img_size
  points = torch.rand(batch, 4, 2, generator=g) * n
  labels = torch.tensor([[1, 0, -1, 1], [1, 1, 0, 0], [0, 1, 1, -1]])[:batch]
  x0y0 = torch.rand(batch, 2, generator=g) * n / 2
  boxes = torch.cat([x0y0, x0y0 + torch.rand(batch, 2, generator=g) * n / 2], dim=1)
  grid = n // config.patch_size
  masks = torch.randn(batch, 1, 4 * grid, 4 * grid, generator=g) * 3
  return points, labels, boxes, masks


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_prompt_encoder_matches_official(kind, tiny, record_figure):
  config, official, params = tiny
  points, labels, boxes, masks = _prompts(config)
  use = PROMPTS[kind]
  with torch.no_grad():
    sparse, dense = official.prompt_encoder(
        points=(points, labels) if "points" in use else None,
        boxes=boxes if "boxes" in use else None, masks=masks if "masks" in use else None)
  ours_sparse, ours_dense = sam_model.Sam(sam_model._frozen(config)).apply(
      {"params": params},
      jnp.asarray(points.numpy()) if "points" in use else None,
      jnp.asarray(labels.numpy()) if "points" in use else None,
      jnp.asarray(boxes.numpy()) if "boxes" in use else None,
      jnp.asarray(masks.numpy()[:, 0]) if "masks" in use else None,
      method=lambda m, *a: m.prompt_encoder(*a))
  check(f"tiny_prompt_encoder_sparse[{kind}]", sparse.numpy(), ours_sparse, record_figure)
  check(f"tiny_prompt_encoder_dense[{kind}]", dense.detach().numpy().transpose(0, 2, 3, 1), ours_dense,
        record_figure)


def test_dense_positional_encoding_matches_official(tiny, record_figure):
  config, official, params = tiny
  with torch.no_grad():
    expected = official.prompt_encoder.get_dense_pe().numpy().transpose(0, 2, 3, 1)
  ours = sam_model.Sam(sam_model._frozen(config)).apply(
      {"params": params}, method=lambda m: m.prompt_encoder.dense_pe())
  check("tiny_dense_pe", expected, ours, record_figure)


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("kind", ["points", "points+boxes", "boxes", "points+boxes+mask"])
def test_mask_decoder_matches_official(kind, multimask, tiny, record_figure):
  config, official, params = tiny
  points, labels, boxes, masks = _prompts(config)
  use = PROMPTS[kind]
  grid = config.img_size // config.patch_size
  # One image embedding shared by three prompts: the official predictor's layout.
  embedding = torch.randn(1, config.prompt_embed_dim, grid, grid,
                          generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    sparse, dense = official.prompt_encoder(
        points=(points, labels) if "points" in use else None,
        boxes=boxes if "boxes" in use else None, masks=masks if "masks" in use else None)
    low_res, iou = official.mask_decoder(embedding, official.prompt_encoder.get_dense_pe(),
                                         sparse, dense, multimask)
  ours_low_res, ours_iou = sam_model.decode(
      params, jnp.asarray(embedding.numpy().transpose(0, 2, 3, 1)), config,
      points=jnp.asarray(points.numpy()) if "points" in use else None,
      labels=jnp.asarray(labels.numpy()) if "points" in use else None,
      boxes=jnp.asarray(boxes.numpy()) if "boxes" in use else None,
      mask_input=jnp.asarray(masks.numpy()[:, 0]) if "masks" in use else None,
      multimask_output=multimask)
  tag = f"[{kind},{'multi' if multimask else 'single'}]"
  check(f"tiny_decoder_logits{tag}", low_res.numpy(), ours_low_res, record_figure)
  check(f"tiny_decoder_iou{tag}", iou.numpy(), ours_iou, record_figure)
