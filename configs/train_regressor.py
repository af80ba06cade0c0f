"""Your own Dice regressor from a labelled folder, and a verdict: should SAMPOT use it?

    python main.py --config configs/train_regressor.py --workdir runs/my_regressor \
        --config.data.dir=MYDATA [--config.data.target=heart] [--config.data.label=N]

MYDATA holds `images/` (PNG/JPEG/TIFF, 8 or 16 bits, DICOM, single-slice NIfTI; any size) and
the masks under the images' file names: in `masks/` (the structure only), in
`masks/<target>/` (e.g. `masks/heart/` with --config.data.target=heart), or `masks/left/` +
`masks/right/` for lungs. Masks are 0/1 or 0/255, or label maps with --config.data.label=N
(the structure is the pixels equal to N). An `id,split[,finding]` splits.csv is used when
present; else a seeded split (41/28/53 % train/val/test, --config.data.split_seed) is made and
written to WORKDIR/splits.csv.

What it does: the config.sam model's masks of rough boxes around each structure (and the
synthetic failure masks) with their true Dice; the regressor trained on them
(configs/lite_medsam_regressor.py's settings: 128 px, <= 25 epochs); its tables on the test
images (regressor_eval.md); then WORKDIR/verdict.md: on the first 40 test images, the
regressor against the model's own IoU head (r, r where Dice >= 0.8, within-image Spearman) and
SAMPOT's outcome from rough boxes (mean gain, images improved and made worse), with a plain
sentence on whether SAMPOT should use it. Then:

    python main.py --config configs/refine.py --config.regressor.workdir=runs/my_regressor \
        --config.data.target=heart ...

A few labelled images of a new site: start from a shipped regressor, e.g.
`--config.init_from=lite_medsam_lung_left --config.train_images=10` (configs/fine_tune_regressor.py).
"""
from configs import lite_medsam_regressor
from configs import refine
from sampot_jax.runtime import settings


def get_config():
  config = lite_medsam_regressor.get_config()
  config.data.source = "folder"
  config.data.dir = ""  # required: --config.data.dir=MYDATA
  # SAMPOT as refine runs it (30 Adam steps of 3 px, ranked by the 0.3 blend with the IoU head,
  # its safeguards): the verdict judges the regressor in that use.
  sampot = refine.get_config()
  config.evolve = sampot.evolve
  config.safeguards = sampot.safeguards
  config.verdict = settings.block(settings.Verdict())
  return config
