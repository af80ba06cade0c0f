"""Trains the Dice regressor as the paper specifies (section 3.2).

Five 3x3 convolutions (stride 2) interleaved with BatchNorm and leaky ReLU, a
linear readout and a sigmoid, on image + mask at 256x256; Adam at a constant
1e-3, batch 32, MSE, up to 200 epochs, best validation loss kept.

python main.py --config configs/regressor_paper.py \
  --config.data.dir=../shared/data/montgomery --workdir /tmp/reg_runs/paper

(configs/train_regressor.py is the one to train your own on a labelled folder.)
"""
import ml_collections

from sampot_jax.runtime import settings


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "train_regressor"
  config.seed = 0

  config.data = settings.block(settings.Data())
  # 0 = every subject of each split; a small number makes quick runs.
  config.max_images_per_split = 0
  # 0 = the whole train split; N: N of its subjects (the first N in id order, or a draw: below),
  # e.g. a few labelled images of a new site. With N > 0 nothing is held out: the val split is
  # not read, the run trains num_epochs and keeps the last epoch (patience does not apply).
  config.train_images = 0
  # 0 = those N are the first N; k > 0: N subjects drawn at random with seed k (another choice
  # of the few labelled images, to see how much a result depends on which images they were).
  config.train_images_draw = 0
  # '' = random init; a shipped regressor's name (regressor/shipped.py): start from its weights
  # (fine-tuning; config.model must match its card).
  config.init_from = ""
  config.candidates = settings.block(settings.Candidates())
  # Fields of config.candidates that differ for the train and val splits (the test split is the
  # benchmark and keeps config.candidates), e.g. more model-made masks; empty: none differ.
  config.train_val_candidates = ml_collections.ConfigDict()
  # Cache of the candidate sets (.npz, keyed by the fields above); None means
  # workdir/candidates. Point runs of several variants at one folder.
  config.candidates_dir = ml_collections.config_dict.placeholder(str)

  config.model = ml_collections.ConfigDict()
  # The paper gives no widths, kernels or strides. A 4x4 stride-4 first
  # convolution keeps 256x256 input affordable on a CPU (docs/regressor.md);
  # the last map is 8x8x64.
  config.model.features = (16, 32, 64, 64, 64)
  config.model.strides = (4, 2, 2, 2, 1)
  config.model.kernel_size = (4, 3, 3, 3, 3)
  config.model.resolution = 256
  config.model.coord_channels = False
  config.model.readout = "flatten"
  config.model.negative_slope = 0.01
  config.model.bn_momentum = 0.9

  # Dice-preserving jitter of training batches (see train_regressor.augment);
  # the paper mentions none.
  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = False
  config.augment.max_shift = 0.05
  config.augment.max_log_gamma = 0.3

  # A within-image ranking loss beside the regression loss (settings.Rank); weight 0: none, as
  # in the paper and the shipped regressors.
  config.rank = settings.block(settings.Rank())

  config.batch_size = 32
  config.learning_rate = 1e-3
  config.num_epochs = 200
  # Stop after this many epochs without a new best validation loss; 0 = never.
  # The paper stops at the minimal validation loss (when it comes: docs/regressor.md).
  config.patience = 25
  config.checkpoint_every = 5
  config.max_checkpoints = 2
  config.log_every = 10
  config.eval_batch_size = 64

  # Erode (<0) / dilate (>0) sweeps of the ground truth, pixels at image_size.
  config.sweep_offsets = (-16, -12, -8, -6, -4, -2, 0, 2, 4, 6, 8, 12, 16)
  return config
