"""Helpers shared by test modules (test modules never import each other).

- Analytic segmenters (`disk_decoder`, `box_decoder`): logits = RADIUS - distance to the click,
  or the box itself, so SAMPOT's loop can be checked where the best prompt is known, without SAM.
- A synthetic candidate set and a small training config (`synthetic_set`, `synthetic_config`).
- Users' image files: DICOM with its tags (`write_dicom`), PNGs, a folder of three (`user_folder`).
"""
import csv
import os
from pathlib import Path
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset

from configs import regressor_paper_tiny
from sampot_jax.regressor.candidate_sets import CandidateSet
from sampot_jax.sam import frozen
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor
from sampot_jax.sam import transforms
from sampot_jax.sampot import evolve
from sampot_jax.sampot import metrics
from sampot_jax.sampot.scorer import Scorer


# ---------------------------------------------------------------------------
# An analytic segmenter: logits = RADIUS - distance to the click (model frame).

DISK_CONFIG = sam_model.sam_config("vit_b", img_size=64)
DISK_FRAME = predictor.frame_for((48, 48), 64)
RADIUS = 12.0
TARGET = (30.0, 20.0)


def disk_decoder(params, embeddings, prompts, frame, config, multimask_output=False):
  """predictor.decode_prompts' signature; (B, 2) click prompts -> disk logits (B, M, 64, 64)."""
  del params, embeddings
  side = config.img_size  # low-res frame = model frame here
  p = transforms.apply_coords(prompts, frame.original_size, config.img_size)
  c = jnp.arange(side) + 0.5
  d2 = (c[None, None, :] - p[:, 0, None, None]) ** 2 + (c[None, :, None] - p[:, 1, None, None]) ** 2
  logits = (RADIUS - jnp.sqrt(d2 + 1e-6))[:, None]
  m = 3 if multimask_output else 1
  return jnp.repeat(logits, m, 1), jnp.ones((prompts.shape[0], m))


def soft_dice(target, image, mask):
  del image
  return 2 * (mask * target).sum((1, 2)) / (mask.sum((1, 2)) + target.sum((1, 2)))


def disk_mask(click, slope=5.0):
  low, _ = disk_decoder(None, None, jnp.asarray([click]), DISK_FRAME, DISK_CONFIG)
  return evolve.soft_mask(low[:, 0], DISK_FRAME, 64, (48, 48), slope)


def dice_with_image(variables, image, mask):
  """Soft Dice of the mask with the image (variables are shared by the batch: unused)."""
  del variables
  return 2 * (mask * image).sum((1, 2)) / (mask.sum((1, 2)) + image.sum((1, 2)))


def box_decoder(params, embeddings, prompts, frame, config, multimask_output=False):
  """predictor.decode_prompts' signature; (B, 4) box prompts -> logits of the box itself
  (positive inside, 1 per pixel of distance to the nearest side), (B, M, 64, 64)."""
  del params, embeddings
  box = transforms.apply_boxes(prompts, frame.original_size, config.img_size)
  c = jnp.arange(config.img_size) + 0.5
  inside_x = jnp.minimum(c[None, None, :] - box[:, 0, None, None], box[:, 2, None, None] - c[None, None, :])
  inside_y = jnp.minimum(c[None, :, None] - box[:, 1, None, None], box[:, 3, None, None] - c[None, :, None])
  logits = jnp.minimum(inside_x, inside_y)[:, None]
  m = 3 if multimask_output else 1
  return jnp.repeat(logits, m, 1), jnp.ones((prompts.shape[0], m))


# ---------------------------------------------------------------------------
# Synthetic candidate sets for training tests: discs on noise, moved / resized discs.

def disk_sam(decode=disk_decoder) -> frozen.Sam:
  """An analytic segmenter on DISK_CONFIG (no weights)."""
  return frozen.Sam({}, DISK_CONFIG, decode=decode)


def target_scorer(fn=soft_dice, target=None) -> Scorer:
  """A score that knows the answer: fn(target, image, mask) (target=None: fn compares the mask
  with the image it is given)."""
  return Scorer(fn, target, 48)


def disk_batch(prompts, images_small=None) -> evolve.Batch:
  """prompts (B, D) on 48 x 48 images of the DISK_FRAME (zeros unless images_small)."""
  prompts = np.asarray(prompts, np.float32)
  n = len(prompts)
  small = jnp.zeros((n, 48, 48)) if images_small is None else images_small
  return evolve.Batch(jnp.zeros((n, 1, 1, 1)), DISK_FRAME, small, prompts)


SIZE = 32


def disc(size, cy, cx, r):
  yy, xx = np.mgrid[:size, :size]
  return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def synthetic_set(n_images: int, seed: int) -> CandidateSet:
  """Discs on noise; candidates are shifted / resized discs with true Dice."""
  rng = np.random.default_rng(seed)
  images, targets, masks, index, dice, kinds = [], [], [], [], [], []
  for i in range(n_images):
    cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 9)
    target = disc(SIZE, cy, cx, r)
    image = (rng.uniform(0, 60, (SIZE, SIZE)) + 150 * target).astype(np.uint8)
    images.append(image)
    targets.append(target)
    for _ in range(6):
      m = disc(SIZE, cy + rng.normal(0, 3), cx + rng.normal(0, 3),
               r * rng.uniform(0.6, 1.4))
      masks.append(m)
      index.append(i)
      dice.append(metrics.dice(m, target))
      kinds.append("shift")
  return CandidateSet(
      ids=np.array([f"s{i}" for i in range(n_images)]),
      images=np.stack(images), targets=np.stack(targets),
      others=np.zeros_like(np.stack(targets)), masks=np.stack(masks), image_index=np.array(index, np.int32),
      dice=np.array(dice, np.float32), kinds=np.array(kinds),
      model_iou=np.full(len(dice), np.nan, np.float32))


def synthetic_config(num_epochs=5, checkpoint_every=2):
  config = regressor_paper_tiny.get_config()
  config.data.image_size = SIZE
  config.model.resolution = SIZE
  config.model.strides = (2, 2, 2, 1, 1)
  config.model.kernel_size = (3, 3, 3, 3, 3)
  config.num_epochs = num_epochs
  config.checkpoint_every = checkpoint_every
  return config


def assert_trees_equal(a, b):
  """Exact equality of two training states, wall-clock times aside."""
  a = {k: v for k, v in a.items() if k != "seconds"}
  b = {k: v for k, v in b.items() if k != "seconds"}
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x),
                                                          np.asarray(y)), a, b)


# ---------------------------------------------------------------------------------------------
# Users' image files (refine, score, the image readers).
# ---------------------------------------------------------------------------------------------

def write_dicom(path, stored, photometric="MONOCHROME2", bits_stored=12, rescale=None,
                window=None, function=None, voi_lut=None, frames=None, truncate=False,
                tags=None):
  """An uncompressed single-sample DICOM file (16 bits allocated, unsigned) via pydicom; `tags`
  {keyword: value} are set last."""
  stored = np.asarray(stored, np.uint16)
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = "OT"
  ds.Rows, ds.Columns = stored.shape[-2:]
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = 16
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = 0
  if frames:
    ds.NumberOfFrames = frames
  if rescale is not None:
    ds.RescaleSlope, ds.RescaleIntercept = rescale
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = window
  if function is not None:
    ds.VOILUTFunction = function
  if voi_lut is not None:
    descriptor, data, vr = voi_lut
    item = Dataset()
    item.add_new(0x00283002, "US", list(descriptor))  # LUT Descriptor
    values = np.asarray(data).astype("<u2").tobytes() if vr == "OW" else [int(v) for v in data]
    item.add_new(0x00283006, vr, values)  # LUT Data
    ds.VOILUTSequence = [item]
  for keyword, value in (tags or {}).items():
    setattr(ds, keyword, value)
  data = stored.astype("<u2").tobytes()
  ds.PixelData = data[:len(data) // 2] if truncate else data
  ds.save_as(str(path), enforce_file_format=True)
  return Path(path)


def write_series(folder, data, affine, window=None, series_uid=None, seed=0, prefix="IM"):
  """A DICOM series of (X, Y, Z) uint16 `data` whose voxel -> RAS+ mm affine is `affine` (its
  first two columns orthogonal): one file per slice, Image Position/Orientation (Patient) and
  Pixel Spacing from the affine (LPS+ is RAS+ with x and y negated), files named in a shuffled
  order so that only their positions tell the slice order. Returns the files in slice order."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
  x_spacing, y_spacing = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
  orientation = np.concatenate([lps[:3, 0] / x_spacing, lps[:3, 1] / y_spacing])
  series_uid = series_uid or uid.generate_uid()
  names = np.random.default_rng(seed).permutation(data.shape[2])
  files = []
  for z in range(data.shape[2]):
    position = (lps @ np.array([0.0, 0.0, z, 1.0]))[:3]
    files.append(write_dicom(
        folder / f"{prefix}{names[z]:04d}", np.asarray(data[:, :, z]).T, window=window,
        tags=dict(SeriesInstanceUID=series_uid, InstanceNumber=z + 1,
                  ImagePositionPatient=[round(float(v), 6) for v in position],
                  ImageOrientationPatient=[round(float(v), 6) for v in orientation],
                  PixelSpacing=[round(float(y_spacing), 6), round(float(x_spacing), 6)])))
  return files


def linear_window(x, c, w):
  """DICOM PS3.3 C.11.2.1.2.1 LINEAR, written out independently of the reader, onto 0..255."""
  x = np.asarray(x, np.float64)
  y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
               np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ((x - (c - 0.5)) / (w - 1) + 0.5) * 255))
  return np.rint(y).astype(np.uint8)


def ramp(h, w, top):
  return (np.arange(h * w).reshape(h, w) * top // (h * w - 1)).astype(np.uint16)


def write_png(path, h, w, seed=0, bits=8):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  top = 255 if bits == 8 else 65535
  arr = rng.integers(0, top, (h, w)).astype(np.uint8 if bits == 8 else np.uint16)
  Image.fromarray(arr).save(path)
  return path


def read_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def user_folder(tmp_path):
  """Three good images (8-bit square, 16-bit non-square, DICOM MONOCHROME1) and bad ones."""
  images = tmp_path / "images"
  write_png(images / "a.png", 40, 40, 0)
  write_png(images / "sub" / "b.png", 30, 50, 1, bits=16)
  images.mkdir(exist_ok=True)
  write_dicom(images / "c.dcm", ramp(36, 24, 4000), "MONOCHROME1", window=(2000, 3000))
  return images


ROOT = Path(__file__).resolve().parents[1]


def refine_tiny_config(images, prompts, **overrides):
  """configs/refine_tiny.py on `images` and `prompts`; overrides: top-level fields."""
  from configs import refine_tiny  # pylint: disable=g-import-not-at-top
  config = refine_tiny.get_config()
  config.images, config.prompts = str(images), str(prompts)
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def refused_inputs(config, workdir, monkeypatch) -> str:
  """The message of the BadInputsError refine.run raises for `config`, with model loading
  disabled (the refusal must come before any model loads)."""
  import pytest  # pylint: disable=g-import-not-at-top
  from sampot_jax import errors  # pylint: disable=g-import-not-at-top
  from sampot_jax.tasks import refine  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(refine, "Refiner", None)  # a model load would fail loudly
  with pytest.raises(errors.BadInputsError) as raised:
    refine.run(config, workdir)
  return str(raised.value)


def run_main(*args, timeout=900) -> subprocess.CompletedProcess:
  """main.py in a fresh process, as a user runs it (XLA's optimisations as the test's: off
  unless it is marked `optimized`, tests/conftest.py); its exit status is the caller's to check."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def run_main_processes(*args, workdir, count=2, timeout=600) -> list[str]:
  """main.py as `count` processes of one jax.distributed run on localhost (a free port for the
  coordinator), all writing to `workdir`; each must exit 0. Returns their logs (stderr)."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  procs = [subprocess.Popen(
      [sys.executable, "main.py", *map(str, args), "--workdir", str(workdir),
       f"--config.distributed.num_processes={count}", f"--config.distributed.process_id={k}",
       f"--config.distributed.coordinator=localhost:{port}"], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(count)]
  logs = [p.communicate(timeout=timeout)[1] for p in procs]
  assert [p.returncode for p in procs] == [0] * count, "".join(log[-3000:] for log in logs)
  return logs


def on_montgomery(config, tmp_path):
  """An evaluate-like tiny config pointed at the Montgomery data, with this test's own TFDS and
  embedding folders."""
  from tests.conftest import MONTGOMERY  # pylint: disable=g-import-not-at-top
  config.data.dir = str(MONTGOMERY)
  config.data.tfds_dir = str(tmp_path / "tfds")
  config.embedding_cache_dir = str(tmp_path / "embeddings")
  return config
