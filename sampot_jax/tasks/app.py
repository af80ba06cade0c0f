"""Draw a box, watch it refine: the local web page (task 'app'; configs/app.py, docs/app.md).

    python main.py --config configs/app.py --workdir OUT [--config.images=FOLDER] [--config.port=0]

Loads the run's models (as refine does), compiles the programs on a blank image in the
background (config.warm_up: the page answers meanwhile, its first box waits), serves the page
on config.host:config.port and prints its address (stdout and the log) until Ctrl-C or SIGTERM;
then the uploads' temporary folder is removed. Nothing is written to the workdir.
"""
import signal
import sys
import threading
import time

from absl import logging

from sampot_jax.app import server as server_lib
from sampot_jax.app import sessions
from sampot_jax.tasks import common


def _stop_on_sigterm():
  """SIGTERM ends the page as Ctrl-C does (the temporary folder removed)."""
  def handler(signum, frame):
    del signum, frame
    raise KeyboardInterrupt
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, handler)


def run(config, workdir) -> dict:
  common.start(config, workdir)
  t0 = time.time()
  app = sessions.App(common.load_sam(config), common.load_scorer(config), config)
  logging.info("Models loaded in %.1f s: SAM %s, regressor %s.", time.time() - t0,
               app.refiner.sam.config.variant, app.info()["regressor"])
  server = None
  try:
    server = server_lib.make_server(app, config.host, config.port)
    if config.warm_up:
      def warm():
        logging.info("Compiling the page's programs (the first box waits for them)...")
        logging.info("Programs compiled in %.1f s: the page is warm.", app.warm_up())
      threading.Thread(target=warm, name="warm-up", daemon=True).start()
    if not server_lib.loopback(config.host):
      logging.warning("config.host=%s: the page is served to the network, without "
                      "authentication; anyone who reaches it can upload images.", config.host)
    logging.info("The page is at %s (Ctrl-C stops it).", server.url)
    sys.stdout.write(f"SAMPOT page: {server.url}\n")
    sys.stdout.flush()
    _stop_on_sigterm()
    try:
      server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
      logging.info("Stopped.")
  finally:
    if server is not None:
      server.server_close()
    app.close()
  return {"task": "app", "url": server.url if server else None}
