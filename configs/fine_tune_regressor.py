"""A shipped regressor adapted to a new site with a few labelled images.

    python main.py --config configs/fine_tune_regressor.py --workdir runs/ft_mysite \
        --config.data.dir=MYSITE --config.train_images=10

Starts from the shipped regressor config.init_from (its target: --config.data.target) and
trains it further on the model's masks of the first train_images images of MYSITE's train split
(a folder as configs/train_regressor.py reads it), at a tenth of the learning rate, for a fixed
num_epochs: with a few labels nothing is held out, so there is no early stopping and the last
epoch is kept. Then the tables and the verdict on MYSITE's test images, as train_regressor's.
--config.train_images=0 would fine-tune on the whole train split; --config.train_images_draw=K
takes train_images images drawn at random with seed K instead of the first ones.
"""
from configs import train_regressor


def get_config():
  config = train_regressor.get_config()
  config.init_from = "lite_medsam_lung_left"
  config.train_images = 10
  # Chosen before any run, not tuned on a test split: a tenth of the rate that trained the
  # shipped regressors, 20 passes over the few images' masks (300 Adam steps for 5 images,
  # 3000 for 50).
  config.learning_rate = 1e-4
  config.num_epochs = 20
  return config
