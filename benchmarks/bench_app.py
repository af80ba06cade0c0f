"""The web page's response times on this machine (task 'app', docs/app.md): prints figures.

    python -m benchmarks.bench_app [--config configs/app.py] [--masks 20] [--refines 5]
                                   [--out benchmarks/results/app_cpu.json]

With the real config (LiteMedSAM, the shipped regressor, 30 steps) on one 512 x 512 image (a
Montgomery X-ray from ../shared with a rough box around its left lung; a synthetic image where
that is absent), after the page's warm-up (App.warm_up, as the task runs it at start):

- mask: "box drawn" -> mask shown: App.mask (SAM's mask at the image's size, the regressor's
  score, the PNG), and the same over HTTP (/api/mask on a local server, JSON decoded);
- refine: "Refine" -> refined mask: App.refine (SAMPOT, safeguards, masks, results row), and
  over HTTP (/api/refine); refine_sampot_s: the evolution's share of the last one;
- open: the upload, decoded and encoded once (App.upload).

Each figure is the median (and the max) over its runs, boxes moved by a few pixels between runs.
The browser's own drawing (decoding the PNG, tinting the mask) is not included. Goals: mask
<= 0.5 s, refine (30 steps) <= 5 s. The process is set up as main.py sets it (runtime.cpu:
malloc and XLA:CPU flags) before JAX starts.
"""
import argparse
import io
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "montgomery"
GOALS = {"mask": 0.5, "refine": 5.0}


def cpu_name() -> str:
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True
                               ).stdout.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or "unknown"


def test_image(np, Image):
  """(PNG bytes, name, box) of a 512 x 512 image and a rough box (original pixels)."""
  images = sorted((DATA / "images").glob("*.png")) if DATA.is_dir() else []
  if images:
    path = images[0]
    mask = np.asarray(Image.open(DATA / "masks" / "left" / path.name)) > 0
    ys, xs = np.nonzero(mask)
    box = [xs.min() - 12.0, ys.min() + 15.0, xs.max() + 10.0, ys.max() - 20.0]
    pixels = np.asarray(Image.open(path).convert("L").resize((512, 512)))
    name = path.name
  else:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    lung = ((yy - 256) / 180) ** 2 + ((xx - 330) / 90) ** 2 < 1
    pixels = (rng.uniform(0, 60, (512, 512)) + 150 * lung).astype(np.uint8)
    box, name = [220.0, 60.0, 440.0, 450.0], "synthetic.png"
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue(), name, [float(np.clip(v, 0, 511)) for v in box]


def post(url, body, token, headers=None):
  headers = dict(headers or {}, **{"X-Session": token})
  if isinstance(body, dict):
    body = json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
  request = urllib.request.Request(url, data=body, headers=headers, method="POST")
  with urllib.request.urlopen(request, timeout=600) as response:
    return json.loads(response.read())


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/app.py")
  parser.add_argument("--masks", type=int, default=20)
  parser.add_argument("--refines", type=int, default=5)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  load_before = list(os.getloadavg())

  from sampot_jax.runtime import cpu  # pylint: disable=g-import-not-at-top
  cpu.keep_freed_memory()  # as main.py, before JAX starts
  cpu.configure_xla_cpu("auto")
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT))
  from sampot_jax.app import server as server_lib  # pylint: disable=g-import-not-at-top
  from sampot_jax.app import sessions  # pylint: disable=g-import-not-at-top
  from sampot_jax.regressor import store  # pylint: disable=g-import-not-at-top
  from sampot_jax.sam import frozen  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("app_config", ROOT / args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()

  t0 = time.time()
  # The models as the task loads them (tasks/common.load_sam, load_scorer).
  app = sessions.App(frozen.from_config(config.sam),
                     store.from_config(config.regressor, sam_variant=config.sam.variant), config)
  load_s = time.time() - t0
  warm_s = app.warm_up()
  data, name, box = test_image(np, Image)
  token = app.new_session()
  t0 = time.time()
  info = app.upload(token, name, data)
  open_s = time.time() - t0
  rng = np.random.default_rng(0)
  boxes = lambda n: [list(np.asarray(box) + rng.uniform(-4, 4, 4)) for _ in range(n)]

  def timed(fn, items):
    seconds, last = [], None
    for item in items:
      t = time.perf_counter()
      last = fn(item)
      seconds.append(time.perf_counter() - t)
    return seconds, last

  app.mask(token, info["image"], box)  # the final masks' upsampling, compiled for 512 x 512
  mask_s, shown = timed(lambda b: app.mask(token, info["image"], b), boxes(args.masks))
  refine_s, result = timed(lambda b: app.refine(token, info["image"], b), boxes(args.refines))

  server = server_lib.make_server(app, "127.0.0.1", 0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  http_token = post(server.url + "api/session", {}, "")["token"]
  opened = post(server.url + "api/upload", data, http_token, {"X-Filename": name})
  http_mask_s, _ = timed(lambda b: post(server.url + "api/mask", {"image": opened["image"],
                                                                  "box": b}, http_token),
                         boxes(args.masks))
  http_refine_s, _ = timed(lambda b: post(server.url + "api/refine", {"image": opened["image"],
                                                                      "box": b}, http_token),
                           boxes(args.refines))
  server.shutdown()
  app.close()

  summary = lambda s: {"median_s": round(float(np.median(s)), 3), "max_s": round(max(s), 3),
                       "runs": len(s)}
  figures = {
      "config": args.config, "image": f"{name} 512x512", "box": [round(v, 1) for v in box],
      "sam": str(config.sam.variant), "regressor": app.info()["regressor"],
      "steps": int(config.evolve.num_steps), "starts": int(config.evolve.num_starts),
      "cpu": cpu_name(), "cores": os.cpu_count(),
      "load_average_before": load_before,
      "models_load_s": round(load_s, 2), "warm_up_s": round(warm_s, 2),
      "open_s": round(open_s, 3),
      "mask": summary(mask_s), "mask_http": summary(http_mask_s),
      "refine": summary(refine_s), "refine_http": summary(http_refine_s),
      # Of the last refine: SAMPOT's evolution and the two prompts' decoding (the rest is the
      # safeguards, the masks at 512 x 512, their PNGs and the row).
      "refine_sampot_s": result["seconds_sampot"],
      "goals_s": GOALS,
      "score": {"drawn": round(shown["score"], 3),
                "refined_from": round(result["initial_score"], 3),
                "refined": round(result["evolved_score"], 3), "kept": result["verdict"]["kept"]},
      "load_average_after": list(os.getloadavg()),
  }
  text = json.dumps(figures, indent=2)
  print(text)
  if args.out:
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
