"""Checks an install end to end on CPU in about a minute, without weights or data.

  python main.py --config configs/smoke.py --workdir /tmp/sampot_smoke

A tiny randomly initialised SAM and regressor on generated chest X-ray-like
images (sampot_jax.data.fake_data) run through the whole evaluation: the
report, summary.json and the four figures appear in the workdir. The numbers
mean nothing (random models); that everything runs and is finite is the check.
"""
import ml_collections

from configs import evaluate


def get_config():
  config = evaluate.get_config()
  config.task = "smoke"
  config.num_fake_images = 12  # written to WORKDIR/data/<source>-<n>images; 6 in the test split

  config.data.source = "folder"
  config.data.dir = ""  # filled in by the smoke task (tasks/smoke.py)
  config.data.image_size = 64

  config.sam.random_init = True
  config.sam.overrides = dict(
      img_size=64, embed_dim=16, depth=1, num_heads=1, global_attn_indexes=(0,),
      window_size=2, prompt_embed_dim=16, transformer_mlp_dim=16, iou_head_hidden_dim=16,
      transformer_depth=1, transformer_heads=1, iou_head_depth=1)

  config.regressor.random_init = True
  config.regressor.model = ml_collections.ConfigDict(dict(
      features=(4, 4, 8, 8, 8), strides=(2, 2, 2, 2, 1), kernel_size=3, resolution=32,
      coord_channels=False, readout="flatten", negative_slope=0.01, bn_momentum=0.9))

  config.evolve.num_steps = 8
  config.evolve.num_starts = 2
  config.evolve.restart_jitter = 4.0
  config.baselines.grid_size = 6
  config.batch_size = 4
  config.encode_batch_size = 4
  config.embedding_cache_dir = ""  # filled in by the smoke task: WORKDIR/embeddings
  return config
