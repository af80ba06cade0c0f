"""The one entry point: `python main.py --config configs/NAME.py [--config.key=value] --workdir DIR`.

Each config names its `task`; the task's module does the work (flax examples style).

A user error (sampot_jax.errors.UserError: a missing checkpoint, a bad setting, an unreadable
file) ends in one `error: ...` paragraph on stderr and exit status 1; bad flags exit with
status 2. Any other exception is a bug and keeps its traceback; `--traceback` shows the stack
for user errors too.
"""
import importlib
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for outputs (checkpoints, reports, figures).")
flags.DEFINE_bool("keep_freed_memory", True,
                  "Let malloc keep freed memory for reuse (runtime.cpu.keep_freed_memory): up to "
                  "1.5x faster SAMPOT steps on a CPU; the process keeps its peak footprint.")
flags.DEFINE_enum("cpu_tuning", "auto", ["auto", "off"],
                  "XLA:CPU flags chosen for this CPU (sampot_jax.runtime.cpu.configure_xla_cpu); "
                  "$SAMPOT_XLA_CPU_FLAGS replaces the choice; flags already in XLA_FLAGS win.")
flags.DEFINE_bool("traceback", False,
                  "On an error, show the Python traceback instead of the one-paragraph message.")
flags.mark_flags_as_required(["config", "workdir"])

# task name -> "module:function"; each function takes (config, workdir).
TASKS = {
    "port_sam": "sampot_jax.tasks.port:run",
    "train_regressor": "sampot_jax.tasks.train_regressor:run",
    "evaluate": "sampot_jax.tasks.evaluate:run",
    "smoke": "sampot_jax.tasks.smoke:run",
    "heatmap": "sampot_jax.tasks.heatmap:run",
    "refine": "sampot_jax.tasks.refine:run",
    "score": "sampot_jax.tasks.score:run",
    "ship_regressor": "sampot_jax.tasks.ship_regressor:run",
    "prepare": "sampot_jax.tasks.prepare:run",
    "verdict": "sampot_jax.tasks.verdict:run",
    "app": "sampot_jax.tasks.app:run",
    "compare": "sampot_jax.tasks.compare:run",
}
USAGE_EXIT = 2  # bad flags or arguments
ERROR_EXIT = 1  # a user error raised by the task
INTERRUPTED_EXIT = 130  # Ctrl-C, as a shell reports a process ended by SIGINT


def report(error: BaseException) -> None:
  message = str(error).strip() or type(error).__name__
  sys.stderr.write(f"error: {message}\n(python main.py ... --traceback shows where it was "
                   "raised)\n")


def parse_flags(argv):
  """absl's flag parsing, then the config file is loaded: a bad flag, a config file
  that cannot be loaded or an override of a field it lacks is one message, exit status 2."""
  try:
    rest = FLAGS(argv)
    if FLAGS["config"].present:
      FLAGS.config.get("task")  # ml_collections reports a config file that failed to load here
    return rest
  except Exception as error:  # pylint: disable=broad-except
    if "--traceback" in argv[1:]:
      raise
    cause = error.__cause__ or error
    message = str(cause).strip() or type(cause).__name__
    if isinstance(cause, (AttributeError, KeyError)):
      while cause.args and isinstance(cause.args[0], (AttributeError, KeyError)):
        cause = cause.args[0]  # ml_collections wraps the KeyError that has the message
      name = cause.args[0] if cause.args and isinstance(cause.args[0], str) else str(cause)
      message = f"a --config.* override names a field the config does not have: {name}"
    elif not isinstance(error, flags.Error):
      message = f"the config file cannot be loaded: {message}"
    sys.stderr.write(f"error: {message}\nPass --help to see the flags.\n")
    sys.exit(USAGE_EXIT)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=USAGE_EXIT)
  task = FLAGS.config.task
  if task not in TASKS:
    raise app.UsageError(f"config.task={task!r} is not one of {sorted(TASKS)}; fix the config file.",
                         exitcode=USAGE_EXIT)
  from sampot_jax import errors  # pylint: disable=g-import-not-at-top
  from sampot_jax.runtime import cpu  # pylint: disable=g-import-not-at-top
  from sampot_jax.runtime import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries(FLAGS.verbosity)  # Orbax's and TFDS's INFO lines with --verbosity=1
  if FLAGS.keep_freed_memory:
    cpu.keep_freed_memory()  # before the task's first JAX computation
  cpu.configure_xla_cpu(FLAGS.cpu_tuning)  # likewise: XLA reads XLA_FLAGS when it starts
  module_name, fn_name = TASKS[task].split(":")
  fn = getattr(importlib.import_module(module_name), fn_name)
  try:
    fn(FLAGS.config, FLAGS.workdir)
  except errors.UserError as error:
    if FLAGS.traceback:
      raise
    report(error)
    return getattr(error, "exit_status", ERROR_EXIT)
  except KeyboardInterrupt:
    if FLAGS.traceback:
      raise
    sys.stderr.write("error: interrupted (Ctrl-C).\n")
    return INTERRUPTED_EXIT
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
