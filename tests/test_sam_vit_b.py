"""Full-size parity: the official vit_b SamPredictor against ours, on a real chest X-ray.

The official model is built at seeded random init (plus seeded noise on every tensor, see
sam_reference), saved as a real .pth, ported with the CLI `python -m ports.sam` into Orbax, and
loaded back with `sam_model.load_ported`: the path a user's checkpoint takes.

Tolerances (float32, CPU): measured errors are listed in the test output's "measured figures".
Embeddings and logits must agree to 1e-4 relative (measured: about 1e-5, from summation order
over 12 blocks of 768-wide matmuls). Binary masks at the original size may differ only at pixels
whose official logit is within 1e-3 of the threshold 0, where a 1e-5 difference can flip the sign.
"""
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from skimage import io

pytest.importorskip("torch")
pytest.importorskip("segment_anything")

# The full-size vit_b, built, ported and run twice, against the official code.
pytestmark = [pytest.mark.slow, pytest.mark.optimized]

from reference import official as sam_official
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor
from sampot_jax.sam.port import convert as port_sam
from sampot_jax.storage import checkpoints
from tests.conftest import MONTGOMERY

REL_TOL = 1e-4
FLIP_BAND = 1e-3


def _left_lung_click(mask):
  """The mask pixel nearest the mask's centroid, as (x, y): inside the lung by construction."""
  ys, xs = np.nonzero(mask)
  cy, cx = ys.mean(), xs.mean()
  i = np.argmin((ys - cy) ** 2 + (xs - cx) ** 2)
  return np.array([xs[i], ys[i]], np.float64)


@pytest.fixture(scope="module")
def vit_b(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("vit_b")
  config = sam_model.sam_config("vit_b")
  official = sam_official.official_sam(config, seed=0)
  sam_official.save_pth(official, tmp / "sam_vit_b_random.pth")
  out = tmp / "ported"
  proc = subprocess.run([sys.executable, "-m", "ports.sam", "--checkpoint",
                         str(tmp / "sam_vit_b_random.pth"), "--out", str(out)],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert '"num_tensors": 314' in proc.stdout
  params, loaded_config = sam_model.load_ported(out)
  assert loaded_config.to_dict() == config.to_dict()
  return config, official, params, tmp / "sam_vit_b_random.pth"


@pytest.fixture(scope="module")
def xray():
  image_id = "MCUCXR_0001_0"
  image = io.imread(MONTGOMERY / "images" / f"{image_id}.png")
  left = io.imread(MONTGOMERY / "masks" / "left" / f"{image_id}.png") > 0
  assert image.ndim == 2 and image.dtype == np.uint8
  return image, _left_lung_click(left)


@pytest.mark.needs_data
def test_vit_b_end_to_end_matches_official_predictor(vit_b, xray, record_figure):
  from segment_anything import SamPredictor

  config, official, params, _ = vit_b
  image, click = xray
  reference = SamPredictor(official)
  reference.set_image(np.repeat(image[..., None], 3, axis=-1))  # the official API wants RGB
  expected_embedding = reference.features.numpy().transpose(0, 2, 3, 1)

  embedding, frame = predictor.encode_images(params, image[None], config)  # grayscale accepted
  err = sam_official.errors(expected_embedding, embedding)
  record_figure("vit_b_image_embedding", err)
  assert embedding.shape == (1, 64, 64, 256)
  assert err["max_rel"] < REL_TOL, err
  assert frame.original_size == reference.original_size
  assert frame.input_size == reference.input_size

  for multimask in (True, False):
    tag = "multimask" if multimask else "single"
    exp_logits, exp_iou, exp_low_res = reference.predict(
        point_coords=click[None], point_labels=np.array([1]), multimask_output=multimask,
        return_logits=True)
    logits, iou, low_res = predictor.predict(
        params, embedding, frame, config, points=click[None, None], labels=np.array([[1]]),
        multimask_output=multimask, return_logits=True)
    for name, ref, ours in (("low_res_logits", exp_low_res, low_res[0]), ("iou", exp_iou, iou[0]),
                            ("logits_original_size", exp_logits, logits[0])):
      err = sam_official.errors(ref, ours)
      record_figure(f"vit_b_{name}[{tag}]", err)
      assert np.shape(ours) == np.shape(ref), name
      assert err["max_rel"] < REL_TOL, (name, tag, err)

    exp_masks = exp_logits > reference.model.mask_threshold
    masks = np.asarray(logits[0]) > predictor.MASK_THRESHOLD
    flipped = exp_masks != masks
    record_figure(f"vit_b_binary_mask_flips[{tag}]",
                  {"pixels": int(flipped.sum()), "of": int(flipped.size),
                   "foreground": int(exp_masks.sum())})
    assert np.all(np.abs(exp_logits[flipped]) < FLIP_BAND), "a mask pixel differs away from 0"
    assert exp_masks.shape == (len(exp_iou),) + image.shape


def test_fetch_and_port_ports_a_cached_official_checkpoint_once(vit_b, tmp_path, monkeypatch):
  """The main job's path: the official file in the cache -> ported once -> loaded.

  fetch_checkpoint checks a cached file's sha256 against the prefix in its name, so the random
  file goes in under a name carrying its own prefix, made the official vit_b name for this test.
  """
  config, _, params, pth = vit_b
  cache = tmp_path / "cache"
  cache.mkdir()
  name = f"sam_vit_b_{checkpoints.sha256_file(pth)[:6]}.pth"
  monkeypatch.setitem(checkpoints.SAM_CHECKPOINTS, "vit_b",
                      (name, checkpoints.SAM_URL_BASE + name))
  shutil.copyfile(pth, cache / name)  # as fetch_checkpoint leaves it
  monkeypatch.setenv("SAMPOT_CACHE", str(cache))
  loaded, loaded_config = port_sam.fetch_and_port(variant="vit_b")
  assert (cache / "sam_vit_b_flax" / "manifest.json").exists()
  assert loaded_config.to_dict() == config.to_dict()
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  (cache / name).unlink()  # a second call must not need the .pth again
  again, _ = port_sam.fetch_and_port(variant="vit_b")
  assert jax.tree.structure(again) == jax.tree.structure(params)
