"""Port the official SAM checkpoint to an Orbax checkpoint.

  python main.py --config configs/port_sam.py --workdir W                # fetch + port vit_b
  python main.py --config configs/port_sam.py --config.checkpoint=sam_vit_b_01ec64.pth \
      --config.out=checkpoints/sam_vit_b

Without --config.checkpoint the official file is downloaded once into the cache
($SAMPOT_CACHE, default ~/.cache/sampot_jax) and its sha256 checked.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.task = "port_sam"
  config.variant = "vit_b"      # vit_b | vit_l | vit_h
  config.checkpoint = ""        # official .pth; empty: fetch into the cache
  config.out = ""               # output directory; empty: WORKDIR/sam_<variant>
  config.overwrite = False
  return config
