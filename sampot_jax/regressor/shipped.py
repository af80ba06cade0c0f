"""Regressors shipped inside the package: chosen by name, checked by hash, no training first.

    model, variables = shipped.read("lite_medsam_lung_left")  # store.from_config makes a Scorer
    python -m sampot_jax.regressor.shipped                     # the names, what each is for

Each is two files in sampot_jax/regressor/weights/:
  NAME.npz   the variables, one array per tree path (jax.tree_util.keystr), float16 or float32
  NAME.json  its card: the model fields, the target and SAM variant it scores, the stored dtype,
             the npz's sha256 and every array's crc32 (checkpoints.array_index), how it was
             trained (the command that reproduces it, the commit, the time) and where its
             measured tables are
`write` makes both (the ship_regressor task, from a train_regressor workdir: temporary files,
then rename); `read` refuses a file whose sha256 differs from its card, naming it and the fix.
"""
import json
import os
from pathlib import Path
import sys

import jax
import numpy as np

from sampot_jax import errors
from sampot_jax.regressor import model as regressor
from sampot_jax.storage import checkpoints
from sampot_jax.storage import files

WEIGHTS_DIR = Path(__file__).parent / "weights"
FORMAT = 1
DTYPES = ("float16", "float32")


def names(folder: Path | None = None) -> list[str]:
  """The shipped regressors' names (their cards in `folder`, default WEIGHTS_DIR)."""
  return sorted(p.stem for p in Path(folder or WEIGHTS_DIR).glob("*.json"))


def card(name: str, folder: Path | None = None) -> dict:
  """NAME.json: what the regressor is and how it was made; an unknown name lists the known."""
  path = Path(folder or WEIGHTS_DIR) / f"{name}.json"
  if not path.is_file():
    known = ", ".join(names(folder)) or "none"
    raise errors.MissingCheckpointError(
        f"config.regressor.name={name!r}: no regressor of that name ships with sampot-jax "
        f"(shipped: {known}). Pick one of those, or train your own and pass "
        "--config.regressor.workdir=DIR (docs/regressor.md).")
  try:
    found = json.loads(path.read_text())
    if found.get("format") != FORMAT:
      raise ValueError(f"format {found.get('format')!r}, expected {FORMAT}")
  except (ValueError, OSError, AttributeError) as e:
    raise errors.RegressorError(f"{path} cannot be read ({e}); reinstall sampot-jax.") from None
  return found


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def write(name: str, made: dict, variables, dtype: str, folder: Path | None = None) -> dict:
  """variables (a regressor's {'params', 'batch_stats'}) -> folder/NAME.npz in `dtype`, and
  NAME.json: `made` (model, data, sam_variant, trained: see the module docstring) with the
  format, dtype and the hashes added. Temporary files, then rename. Returns the card."""
  if dtype not in DTYPES:
    raise errors.ConfigError(f"config.dtype={dtype!r}; it must be one of {DTYPES}.")
  stored = {key: value.astype(dtype) for key, value in _flat(variables).items()}
  folder = Path(folder or WEIGHTS_DIR)
  folder.mkdir(parents=True, exist_ok=True)
  npz = folder / f"{name}.npz"
  tmp = npz.with_name(f".{npz.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    np.savez_compressed(f, **stored)
  os.replace(tmp, npz)
  found = {"format": FORMAT, "name": name, **made, "dtype": dtype,
           "npz_sha256": checkpoints.sha256_file(npz), "arrays": checkpoints.array_index(stored)}
  files.write_json(folder / f"{name}.json", found)
  return found


def read(name: str, folder: Path | None = None) -> tuple[regressor.DiceRegressor, dict]:
  """The shipped regressor `name`: (model, float32 variables), its bytes checked against its
  card (a changed or damaged file is refused, naming it and the fix)."""
  found = card(name, folder)
  npz = Path(folder or WEIGHTS_DIR) / f"{name}.npz"
  fix = "reinstall sampot-jax (pip install -e . in a clean checkout)"
  if not npz.is_file():
    raise errors.RegressorError(f"{npz} is missing: {fix}.")
  if checkpoints.sha256_file(npz) != found["npz_sha256"]:
    raise errors.RegressorError(f"{npz} does not match the sha256 in {name}.json (the file "
                                f"was changed or damaged): {fix}.")
  model = regressor.from_config(found["model"])
  with np.load(npz) as arrays:
    stored = {key: arrays[key] for key in arrays.files}
  problem = checkpoints.index_problem(stored, found["arrays"], f"{name}.json")
  if problem:
    raise errors.RegressorError(f"{npz}: {problem}: {fix}.")
  shapes = jax.eval_shape(lambda: regressor.init_variables(model, jax.random.key(0)))
  paths, tree = jax.tree_util.tree_flatten_with_path(dict(shapes))
  leaves = []
  for path, shape in paths:
    key = jax.tree_util.keystr(path)
    if key not in stored or stored[key].shape != shape.shape:
      raise errors.RegressorError(f"{npz} has no array {key} of shape {shape.shape} for the "
                                  f"model its card describes: {fix}.")
    leaves.append(stored[key].astype(np.float32))
  return model, jax.tree_util.tree_unflatten(tree, leaves)


def _describe(folder: Path | None = None) -> str:
  lines = []
  for name in names(folder):
    found = card(name, folder)
    lines.append(f"{name}: scores {found['data'].get('target')} masks of "
                 f"{found.get('sam_variant')} at {found['model'].get('resolution')} px "
                 f"({found['dtype']}); {found['trained'].get('summary', '')}\n"
                 f"  reproduce: {found['trained'].get('command', '?')}")
  return "\n".join(lines) or "No regressor ships in this installation."


if __name__ == "__main__":
  print(_describe())
  sys.exit(0)
