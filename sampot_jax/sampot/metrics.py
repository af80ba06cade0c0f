"""Agreement between masks (Dice) and between scores and truth (Pearson r, MAE, bias)."""
import jax
import jax.numpy as jnp
import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
  """Dice of two masks (any shape, bool or 0/1). Two empty masks score 1."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.shape != b.shape:
    raise ValueError(f"dice of masks with shapes {a.shape} and {b.shape}; they must match.")
  total = int(a.sum()) + int(b.sum())
  if total == 0:
    return 1.0
  return 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_rows(masks: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Dice of each (H, W) mask with its target: (N, H, W) x (N, H, W) -> (N,) float64."""
  return np.array([dice(m, t) for m, t in zip(masks, targets)], np.float64)


def mask_dice(a: jax.Array, b: jax.Array) -> jax.Array:
  """`dice` over the last two axes for bool arrays, inside compiled code."""
  inter = jnp.sum(a & b, axis=(-2, -1)).astype(jnp.float32)
  total = (jnp.sum(a, axis=(-2, -1)) + jnp.sum(b, axis=(-2, -1))).astype(jnp.float32)
  return jnp.where(total > 0, 2.0 * inter / jnp.maximum(total, 1.0), 1.0)


def soft_dice(masks: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Dice of each (M, S, S) mask against one soft (S, S) reference. (M,) float32."""
  m = masks.reshape(masks.shape[0], -1).astype(np.float32)
  r = reference.reshape(-1).astype(np.float32)
  return 2.0 * (m @ r) / (m.sum(axis=1) + r.sum())


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson r; NaN when either side is constant or has < 2 values."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def agreement(pred: np.ndarray, true: np.ndarray) -> dict:
  """Pearson r, MAE and bias (mean of pred - true: > 0 over-scores)."""
  return {"pearson_r": pearson(pred, true),
          "mae": float(np.mean(np.abs(pred - true))),
          "bias": float(np.mean(pred - true))}
