"""Small synthetic chest X-ray sets written in each raw layout (tests, smoke runs).

A fake radiograph is a bright body ellipse with two dark lung ellipses, the
patient's left lung on the image's right side; sizes and lung positions vary per
subject. `write(source, root, n)` lays out `n` subjects as `sources.py` expects.
"""
import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

from sampot_jax import errors
from sampot_jax.data import raw
from sampot_jax.data import splits as splits_lib


def fake_subject(rng: np.random.Generator, shape=(80, 64)) -> tuple:
  """One synthetic radiograph. -> (image (H, W) uint8, left (H, W) bool, right (H, W) bool)."""
  h, w = shape
  yy, xx = np.indices(shape) + 0.5
  yy, xx = yy / h, xx / w

  def ellipse(cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

  jitter = lambda: rng.uniform(-0.03, 0.03)
  body = ellipse(0.5, 0.5, 0.48, 0.42)
  right = ellipse(0.45 + jitter(), 0.30 + jitter(), 0.28, 0.12)
  left = ellipse(0.45 + jitter(), 0.70 + jitter(), 0.26, 0.11)
  image = np.where(body, 190.0, 15.0)
  image[left | right] = 70.0
  image += rng.normal(0, 6, shape)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), left, right


def write_image(path, array: np.ndarray) -> None:
  """Writes an image (format from the suffix) to a temporary name, then renames."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
  Image.fromarray(array).save(tmp)
  os.replace(tmp, path)


def write_jsrt_img(path, image8: np.ndarray) -> None:
  """Writes a JSRT-style 2048x2048 12-bit big-endian raw file from an 8-bit image."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  big = np.asarray(Image.fromarray(image8).resize(raw.JSRT_SHAPE[::-1], Image.BILINEAR))
  # JSRT stores larger = darker; 12 bits.
  values = np.rint((255 - big.astype(np.float32)) * (4095 / 255)).astype(">u2")
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  values.tofile(tmp)
  os.replace(tmp, path)


def write_splits(path, rows) -> None:
  """Writes id,split,finding rows."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "split", "finding"])
    writer.writerows(rows)
  os.replace(tmp, path)


def write(source: str, root, n: int = 9, seed: int = 0, shape=(80, 64)) -> list[str]:
  """Writes `n` fake subjects in `source`'s raw layout under `root`. -> their ids."""
  root = Path(root)
  rng = np.random.default_rng(seed)
  ids = []
  rows = []
  for i in range(n):
    image, left, right = fake_subject(rng, shape)
    finding = i % 2
    on = lambda m: m.astype(np.uint8) * 255
    if source in ("montgomery_team", "folder"):
      sid = f"MCUCXR_{i + 1:04d}_{finding}"
      write_image(root / "images" / f"{sid}.png", image)
      write_image(root / "masks" / "left" / f"{sid}.png", on(left))
      write_image(root / "masks" / "right" / f"{sid}.png", on(right))
      rows.append([sid, splits_lib.SPLITS[i % 3], ("normal", "tuberculosis")[finding]])
    elif source == "montgomery_nlm":
      sid = f"MCUCXR_{i + 1:04d}_{finding}"
      write_image(root / "CXR_png" / f"{sid}.png", image)
      write_image(root / "ManualMask" / "leftMask" / f"{sid}.png", on(left))
      write_image(root / "ManualMask" / "rightMask" / f"{sid}.png", on(right))
    elif source == "shenzhen":
      sid = f"CHNCXR_{i + 1:04d}_{finding}"
      write_image(root / "CXR_png" / f"{sid}.png", image)
      write_image(root / "mask" / f"{sid}_mask.png", on(left | right))
    elif source == "jsrt_scr":
      sid = f"JPC{'LN' if finding else 'NN'}{i + 1:03d}"
      write_jsrt_img(root / "All247images" / f"{sid}.IMG", image)
      for name, mask in (("left lung", left), ("right lung", right)):
        half = (raw.JSRT_SHAPE[0] // 2, raw.JSRT_SHAPE[1] // 2)
        big = np.asarray(Image.fromarray(on(mask)).resize(half[::-1], Image.NEAREST))
        write_image(root / "scr" / "fold1" / "masks" / name / f"{sid}.gif", big)
    else:
      raise errors.ConfigError(f"no fake layout for source {source!r}.")
    ids.append(sid)
  if source == "montgomery_team":
    write_splits(root / "splits.csv", rows)
  return ids
