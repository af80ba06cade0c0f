"""Overlay pictures of a refined prompt, drawn with Pillow (no matplotlib: fast on big images).

    rgb = overlay.draw(image.pixels, initial_mask, refined_mask, initial_prompt, refined_prompt,
                       caption="...", max_side=1024)
    overlay.write_png(path, rgb)                          # atomic (sampot_jax.storage.files)

The image in grey (or colour), the initial mask's outline and prompt in orange, the refined
(evolved) mask's outline and prompt in cyan, and a caption band above the image. Images larger
than `max_side` are shrunk for the picture (masks with nearest-neighbour sampling), images
smaller than MIN_SIDE enlarged by a whole factor (nearest); prompts are scaled with them.
"""
from pathlib import Path

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from scipy import ndimage

from sampot_jax.storage import files

INITIAL = (255, 150, 0)
REFINED = (0, 230, 255)
MIN_SIDE = 512


def write_png(path, array: np.ndarray) -> Path:
  """(H, W) or (H, W, 3) uint8 to a PNG, written to a temporary name and renamed."""
  image = Image.fromarray(np.ascontiguousarray(array))
  return files.atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), ".png")


def write_mask(path, mask: np.ndarray) -> Path:
  """(H, W) bool -> 8-bit PNG, 0 background / 255 foreground, atomically."""
  return write_png(path, np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))


def outline(mask: np.ndarray, width: int) -> np.ndarray:
  """(H, W) bool -> the mask's inner boundary, `width` pixels thick."""
  mask = np.asarray(mask, bool)
  if not mask.any():
    return mask
  inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
  return mask & ~inner


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: a fixed bitmap font
    return ImageFont.load_default()


def _draw_prompt(draw: ImageDraw.ImageDraw, prompt, scale: float, color, width: int) -> None:
  p = np.asarray(prompt, np.float64) * scale
  if p.size in (4, 6):
    draw.rectangle([p[0], p[1], p[2], p[3]], outline=color, width=width)
  if p.size in (2, 6):
    x, y = p[-2], p[-1]
    r = 3 * width + 2
    draw.ellipse([x - r, y - r, x + r, y + r], outline=color, width=width)
    draw.line([x - 2 * r, y, x + 2 * r, y], fill=color, width=max(1, width // 2))
    draw.line([x, y - 2 * r, x, y + 2 * r], fill=color, width=max(1, width // 2))


def draw(pixels: np.ndarray, initial_mask: np.ndarray, refined_mask: np.ndarray,
         initial_prompt, refined_prompt, caption: str = "", max_side: int = 1024) -> np.ndarray:
  """-> (caption + h, w, 3) uint8, the overlay picture (see the module docstring)."""
  pixels = np.asarray(pixels)
  rgb = np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels[..., :3]
  h, w = rgb.shape[:2]
  if max_side > 0 and max(h, w) > max_side:
    scale = max_side / max(h, w)
  elif max(h, w) < MIN_SIDE:  # small images are enlarged (nearest) so that the caption fits
    scale = float(int(np.ceil(MIN_SIDE / max(h, w))))
  else:
    scale = 1.0
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  picture = Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB")
  masks = [np.asarray(m, bool) for m in (initial_mask, refined_mask)]
  if scale != 1.0:
    picture = picture.resize(size, Image.Resampling.BILINEAR if scale < 1 else
                             Image.Resampling.NEAREST)
    masks = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks]
  canvas = np.array(picture)
  line = max(1, round(max(size) / 400))
  for mask, color in zip(masks, (INITIAL, REFINED)):
    canvas[outline(mask, line)] = color
  picture = Image.fromarray(canvas)
  draw_ = ImageDraw.Draw(picture)
  for prompt, color in ((initial_prompt, INITIAL), (refined_prompt, REFINED)):
    _draw_prompt(draw_, prompt, scale, color, line)
  font_size = max(10, min(24, round(size[0] / 45)))
  font = _font(font_size)
  lines = [text for text in caption.split("\n") if text] + ["orange: initial   cyan: refined"]
  band = (font_size + 4) * len(lines) + 4
  out = Image.new("RGB", (size[0], size[1] + band), (0, 0, 0))
  out.paste(picture, (0, band))
  text = ImageDraw.Draw(out)
  for i, t in enumerate(lines):
    text.text((4, 2 + i * (font_size + 4)), t, fill=(255, 255, 255), font=font)
  return np.asarray(out)
