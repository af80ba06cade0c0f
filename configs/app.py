"""Draw a box, watch it refine: a local web page for SAMPOT (task 'app', docs/app.md).

  python main.py --config configs/app.py --workdir OUT [--config.images=FOLDER] [--config.port=0]

Serves http://127.0.0.1:PORT/ (printed when ready): open an image (upload, or one of
config.images), draw a box, see LiteMedSAM's mask and the regressor's predicted Dice, press
Refine to see SAMPOT's box, its score along the steps and what the safeguards keep, then
download the mask (PNG) and the results row (CSV). Nothing is written to OUT; uploads live in a
temporary folder removed at exit. The models and SAMPOT's settings are refine's
(configs/refine.py): the same image, box and config give the same mask as refine.
"""
import ml_collections

from configs import refine


def get_config() -> ml_collections.ConfigDict:
  base = refine.get_config()
  config = ml_collections.ConfigDict()
  config.task = "app"
  config.host = "127.0.0.1"  # only this machine; another address serves the page to the network
  config.port = 8765  # 0: a free port, chosen when the page starts
  config.images = ""  # optional: a folder (or one image) whose images the page lists
  # Uploads larger than this are refused before they are read (an 8-bit RGB image at the
  # readers' pixel limit, data.images.MAX_PIXELS, is 300 MB uncompressed).
  config.max_upload_mb = 300.0
  config.max_sessions = 16  # browser tabs kept (least recently used dropped, with their images)
  config.images_per_session = 4  # images (and embeddings) kept per tab, least recently used out
  config.warm_up = True  # compile the programs on a blank image at start, not on the first box
  # What shapes the masks, as refine's (configs/refine.py): the same models and settings.
  for field in ("seed", "sam", "regressor", "evolve", "reference_side", "safeguards"):
    config[field] = base[field]
  return config
