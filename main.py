"""The one entry point: `python main.py --config configs/NAME.py [--config.key=value] --workdir DIR`.

Each config names its `task`; the task's module does the work (flax examples style).
"""
import importlib

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs (checkpoints, reports, figures).")
flags.DEFINE_bool("keep_freed_memory", True,
                  "Let malloc keep freed memory for reuse (sampot_jax.runtime.keep_freed_memory): "
                  "up to 1.5x faster SAMPOT steps on a CPU; the process keeps its peak footprint.")
flags.DEFINE_enum("cpu_tuning", "auto", ["auto", "off"],
                  "XLA:CPU flags chosen for this CPU (sampot_jax.runtime.configure_xla_cpu); "
                  "$SAMPOT_XLA_CPU_FLAGS replaces the choice; flags already in XLA_FLAGS win.")
flags.mark_flags_as_required(["config", "workdir"])

# task name -> "module:function"; each function takes (config, workdir).
TASKS = {
    "port_sam": "ports.sam:run",
    "train_regressor": "sampot_jax.train_regressor:run",
    "evaluate": "sampot_jax.evaluate:run",
    "smoke": "sampot_jax.smoke:run",
    "heatmap": "sampot_jax.evaluate:heatmap",
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  task = FLAGS.config.task
  if task not in TASKS:
    raise app.UsageError(f"config.task={task!r} is not one of {sorted(TASKS)}; fix the config file.")
  from sampot_jax import runtime  # pylint: disable=g-import-not-at-top
  if FLAGS.keep_freed_memory:
    runtime.keep_freed_memory()  # before the task's first JAX computation
  runtime.configure_xla_cpu(FLAGS.cpu_tuning)  # likewise: XLA reads XLA_FLAGS when it starts
  module_name, fn_name = TASKS[task].split(":")
  fn = getattr(importlib.import_module(module_name), fn_name)
  fn(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
