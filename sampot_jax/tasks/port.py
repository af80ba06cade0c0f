"""The port task (configs/port_sam.py): official SAM weights -> a Flax parameter folder."""
import json
from pathlib import Path

from sampot_jax import errors
from sampot_jax.sam.port import convert


def run(config, workdir):
  """main.py entry (configs/port_sam.py): port config.checkpoint, or fetch the variant's source."""
  checkpoint = config.checkpoint or convert.fetch_source(config.variant)
  out = config.out or (Path(workdir) / f"sam_{config.variant}" if workdir else None)
  if out is None:
    raise errors.ConfigError("Say where to write the ported checkpoint: --config.out=DIR or --workdir DIR.")
  manifest = convert.port_checkpoint(checkpoint, out, config.variant, overwrite=config.overwrite)
  print(json.dumps({k: v for k, v in manifest.items() if k != "sam_config"}, indent=1))
  print(f"Wrote {out}")
