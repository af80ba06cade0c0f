"""What SAMPOT maximises: a Scorer (image, soft mask) -> predicted Dice, and its blend with
SAM's IoU prediction.

A Scorer is usually a trained regressor (regressor.store.load), but anything with the same
signature plugs in: tests use the true Dice against a known target (its `variables`).
"""
import dataclasses
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Scorer:
  """A frozen score of masks.

  Attributes:
    fn: fn(variables, image (B, S, S), soft_mask (B, S, S)) -> (B,) float32 in [0, 1];
      pure and jit-able. It is a static argument of the compiled loop: keep one object
      per scorer (a new one recompiles).
    variables: the pytree `fn` takes ({'params', 'batch_stats'} for a regressor).
    resolution: the side S of the images it is given (a regressor's model.resolution).
    model: the flax module behind `fn` (None for analytic scores).
  """
  fn: Callable[[Any, jax.Array, jax.Array], jax.Array]
  variables: Any
  resolution: int
  model: Any = None

  def __call__(self, image: jax.Array, soft_mask: jax.Array) -> jax.Array:
    return self.fn(self.variables, image, soft_mask)


def blend(score, iou, iou_weight: float):
  """The score SAMPOT ranks by: (1 - w) * regressor score + w * SAM's IoU prediction."""
  return score if not iou_weight else (1.0 - iou_weight) * score + iou_weight * iou
