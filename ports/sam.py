"""The weight-porting utility: python -m ports.sam --checkpoint FILE.pth --out DIR [--variant V].

A thin command line over sampot_jax.sam.port (the torch-free reader and the key tables).
"""
import json
import sys

from sampot_jax import errors
from sampot_jax.sam import model as sam_model
from sampot_jax.sam.port import convert


def main(argv=None):
  import argparse

  parser = argparse.ArgumentParser(prog="python -m ports.sam", description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="official .pth file")
  parser.add_argument("--out", required=True, help="output directory (Orbax + manifest.json)")
  parser.add_argument("--variant", default="vit_b", choices=sorted(sam_model.VARIANTS))
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a previous port at --out (never a file, nor a folder "
                      "holding anything else)")
  args = parser.parse_args(argv)
  try:
    manifest = convert.port_checkpoint(args.checkpoint, args.out, args.variant, args.overwrite)
  except (errors.UserError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps({k: v for k, v in manifest.items() if k != "sam_config"}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
