"""compare.py in seconds: 3 test images, random tiny models (no weights needed), 2 jitters,
2 draws, budgets 1, 4 and 8."""
from configs import compare
from configs import lite_medsam_evaluate_tiny


def get_config():
  config = compare.get_config()
  tiny = lite_medsam_evaluate_tiny.get_config()
  for key in ("max_images", "batch_size", "encode_batch_size", "embedding_cache_dir"):
    config[key] = tiny[key]
  config.data.image_size = tiny.data.image_size
  config.sam = tiny.sam
  config.regressor = tiny.regressor
  config.budgets = (1, 4, 8)
  config.jitters = (0.1, 0.2)
  config.draws = 2
  # A fixed step cost: the ratio measured on unoptimised tiny programs varies from run to run
  # (about 4 here), and at 2 the budgets buy 0, 1 and 3 Adam steps, so every branch runs.
  # tests/test_compare.py measures it on its own.
  config.step_cost = 2.0
  config.step_cost_probes = 2
  config.peers.map_side = 16
  config.peers.chunk = 8
  return config
