"""The one way a config block becomes a typed settings object."""
import dataclasses
from typing import TypeVar

from sampot_jax import errors

T = TypeVar("T")


def typed(cls: type[T], block, name: str) -> T:
  """`cls` (a dataclass) from a ConfigDict or dict; unknown fields are errors naming `name`.

  Missing fields take the dataclass defaults; lists become tuples (so the
  result stays hashable, e.g. a static argument of jit).
  """
  fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  given = dict(block or {})
  unknown = sorted(set(given) - fields)
  if unknown:
    raise errors.ConfigError(f"{name} has unknown field(s) {unknown}; known: {sorted(fields)}.")
  given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
  return cls(**given)
