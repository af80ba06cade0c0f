"""The web page (task 'app'): its functions without a browser, its HTTP endpoints, and the page in
a real headless browser (Debian's chromium + chromium-driver, driven by selenium) on the tiny
random models of configs/app_tiny.py.

The refined mask the page gets must be the one `refine` writes (masks/NAME.png) for the same
image file, box and config: checked in-process (App.refine against refine.run) and end to end
(the browser's mask against `python main.py --config configs/refine_tiny.py`).
"""
import base64
import csv
import io
import json
import os
from pathlib import Path
import shutil
import signal
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib

import numpy as np
from PIL import Image
import pytest

from sampot_jax import errors
from sampot_jax.app import server as server_lib
from sampot_jax.app import sessions
from sampot_jax.data import images as images_lib
from sampot_jax.tasks import common
from sampot_jax.tasks import refine
from tests import helpers

ROOT = Path(__file__).resolve().parents[1]
BOX = [30.0, 20.0, 90.0, 80.0]
# Restarts: their rng keys (from the file's name, as refine derives them) then shape the result,
# so the equality with refine checks the keys too.
STARTS = 3


def app_config(**overrides):
  from configs import app_tiny  # pylint: disable=g-import-not-at-top
  config = app_tiny.get_config()
  config.evolve.num_starts = STARTS
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def refine_config(images, prompts):
  from configs import refine_tiny  # pylint: disable=g-import-not-at-top
  config = refine_tiny.get_config()
  config.images, config.prompts = str(images), str(prompts)
  config.save_initial_masks = True
  config.evolve.num_starts = STARTS
  return config


def disc_image(h=96, w=128, seed=0) -> np.ndarray:
  """A bright disc on noise: something to draw a box around."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  disc = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 3) ** 2
  return (rng.uniform(0, 60, (h, w)) + 150 * disc).astype(np.uint8)


def png_bytes(array) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def decode(data_url: str) -> np.ndarray:
  """A mask data URL (0/255 PNG) -> (H, W) bool."""
  assert data_url.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))) > 0


def csv_row(text: str) -> dict:
  """The one row of the page's CSV download."""
  rows = list(csv.DictReader(io.StringIO(text)))
  assert len(rows) == 1, text
  return rows[0]


def png_claiming(width: int, height: int) -> bytes:
  """A PNG whose header says width x height (8-bit grey) and whose data is a stub: a pixel bomb
  as a header reader sees it."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
  config = app_config()
  found = sessions.App(common.load_sam(config), common.load_scorer(config), config,
                       temp_root=str(tmp_path_factory.mktemp("app_temp")))
  yield found
  found.close()


# ---------------------------------------------------------------------------------------------
# The server's functions, without a browser.
# ---------------------------------------------------------------------------------------------

def test_a_bad_upload_says_what_the_command_line_says_about_the_file(app, tmp_path):
  token = app.session(app.new_session()).token
  with pytest.raises(errors.BadInputError) as caught:
    app.upload(token, "notes.png", b"not an image at all")
  # The command line on the same file: its message, with the user's name for the file.
  cli = tmp_path / "notes.png"
  cli.write_bytes(b"not an image at all")
  with pytest.raises(errors.BadInputError) as expected:
    images_lib.read_size(cli)
  assert str(caught.value) == str(errors.BadInputError(
      "notes.png", expected.value.reason.replace(str(cli), "notes.png")))
  assert str(caught.value).startswith("notes.png: cannot be read as an image")
  assert str(app.root) not in str(caught.value)  # the temporary copy is never named ...
  assert not [p for p in app.root.rglob("*") if p.is_file()]  # ... and is gone


def test_uploads_are_bounded_in_bytes_pixels_and_names(app):
  token = app.new_session()
  with pytest.raises(sessions.TooLargeError, match=r"big\.png: is 400\.0 MB, over the 300 MB"):
    app.check_upload("big.png", 400 * 2**20)
  h, w = 10_001, 10_000  # just over images.MAX_PIXELS, refused from the header alone
  assert h * w > images_lib.MAX_PIXELS
  with pytest.raises(errors.BadInputError, match=r"bomb\.png: is 10000x10001 \(W x H\) and has "
                     r"100,010,000 pixels, over the 100,000,000"):
    app.upload(token, "bomb.png", png_claiming(w, h))
  with pytest.raises(errors.BadInputError, match="needs at least 16 pixels"):
    app.upload(token, "small.png", png_bytes(np.zeros((8, 40), np.uint8)))
  with pytest.raises(errors.BadInputError, match="is not an image this tool reads"):
    app.upload(token, "a.bmp", png_bytes(disc_image()))
  for bad in ("..", ".hidden.png", "", "a\x00.png"):
    with pytest.raises(errors.BadInputError, match="is not a usable file name"):
      app.upload(token, bad, png_bytes(disc_image()))
  with pytest.raises(errors.BadInputError, match="is empty"):
    app.upload(token, "empty.png", b"")
  # A path in the name keeps its last part only: nothing is written outside the session.
  info = app.upload(token, "../../etc/x.png", png_bytes(disc_image()))
  assert info["name"] == "x.png"
  assert [p.name for p in app.root.rglob("*") if p.is_file()] == ["x.png"]
  assert app.session(token).images[info["image"]].image.size == (96, 128)


def test_sessions_do_not_see_each_others_images(app):
  mine, theirs = app.new_session(), app.new_session()
  assert mine != theirs and len(mine) >= 32
  info = app.upload(mine, "disc.png", png_bytes(disc_image()))
  with pytest.raises(sessions.ImageNotFoundError, match="is not one of this page's images"):
    app.mask(theirs, info["image"], BOX)
  with pytest.raises(sessions.ImageNotFoundError):
    app.refine(theirs, info["image"], BOX)
  with pytest.raises(sessions.SessionError, match="reload the page"):
    app.mask("guessed-token", info["image"], BOX)
  app.mask(mine, info["image"], BOX)  # the owner's request goes through
  # An image id is a random token of its own, not a counter.
  other = app.upload(theirs, "disc.png", png_bytes(disc_image()))
  assert other["image"] != info["image"] and len(other["image"]) == 16


def test_a_session_keeps_its_last_images_only(app):
  token = app.new_session()
  ids = [app.upload(token, f"i{k}.png", png_bytes(disc_image(seed=k)))["image"]
         for k in range(app.images_per_session + 1)]
  with pytest.raises(sessions.ImageNotFoundError, match="least recently used"):
    app.mask(token, ids[0], BOX)
  app.mask(token, ids[-1], BOX)
  names = {p.name for p in app.session(token).folder.rglob("*") if p.is_file()}
  assert names == {f"i{k}.png" for k in range(1, app.images_per_session + 1)}


def test_a_box_gets_its_mask_and_score_and_the_image_is_encoded_once(app):
  token = app.new_session()
  before = app.encodings
  info = app.upload(token, "disc.png", png_bytes(disc_image()))
  assert (info["width"], info["height"], info["intensity"]) == (128, 96, "8-bit")
  shown = app.mask(token, info["image"], BOX)
  mask = decode(shown["mask"])
  assert mask.shape == (96, 128) and shown["mask_pixels"] == mask.sum() > 0
  assert 0.0 <= shown["score"] <= 1.0 and shown["box"] == BOX
  result = app.refine(token, info["image"], BOX)
  app.mask(token, info["image"], [10, 10, 50, 60])
  assert app.encodings == before + 1  # one encoding, however many boxes
  # The box's mask and score are refine's initial ones for it.
  np.testing.assert_array_equal(mask, decode(result["initial_mask"]))
  assert shown["score"] == pytest.approx(result["initial_score"], abs=1e-5)
  # A box outside the image, or not a box, is the command line's message.
  with pytest.raises(errors.BadInputError, match="disc.png: .*outside"):
    app.mask(token, info["image"], [10, 10, 500, 60])
  with pytest.raises(errors.BadInputError, match="four finite numbers"):
    app.mask(token, info["image"], [10, 10, 50])


def test_refine_on_the_page_is_the_refine_task(app, tmp_path):
  """App.refine against refine.run on the same file, box and settings: the same masks (to the
  bit), boxes, scores and verdict."""
  images = tmp_path / "images"
  images.mkdir()
  data = png_bytes(disc_image(seed=3))
  (images / "disc.png").write_bytes(data)
  token = app.new_session()
  info = app.upload(token, "disc.png", data)
  result = app.refine(token, info["image"], BOX)
  prompts = tmp_path / "prompts.csv"
  prompts.write_text("file,x0,y0,x1,y1\ndisc.png," + ",".join(map(repr, BOX)) + "\n")
  refine.run(refine_config(images, prompts), tmp_path / "out")
  assert result["evolved"] != result["initial"]  # SAMPOT moved the box: not a trivial check
  written = np.asarray(Image.open(tmp_path / "out" / "masks" / "disc.png")) > 0
  np.testing.assert_array_equal(decode(result["kept_mask"]), written)
  initial = np.asarray(Image.open(tmp_path / "out" / "initial_masks" / "disc.png")) > 0
  np.testing.assert_array_equal(decode(result["initial_mask"]), initial)
  row = helpers.read_rows(tmp_path / "out" / "results.csv")[0]
  page_row = csv_row(result["csv"])
  for field in ("file", "width", "height", "intensity", "kind", "evolved_x0", "evolved_y0",
                "evolved_x1", "evolved_y1", "kept_x0", "kept_y1", "score_initial",
                "score_evolved", "iou_evolved", "accepted", "kept", "rejected_by",
                "mask_pixels", "best_step", "image_sha256"):
    assert page_row[field] == row[field], field
  assert result["verdict"]["kept"] == row["kept"]
  assert np.shape(result["scores"]) == (STARTS, 4 + 1)  # starts x (steps + 1) points
  assert np.nanmax(np.array(result["scores"], float)) == pytest.approx(result["evolved_score"])


# ---------------------------------------------------------------------------------------------
# HTTP, without a browser.
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def served(app):
  server = server_lib.make_server(app, "127.0.0.1", 0)
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


def call(server, path, body=None, token=None, headers=None, method=None):
  """(status, JSON or text) of one request."""
  headers = dict(headers or {})
  if token:
    headers["X-Session"] = token
  if isinstance(body, dict):
    body = json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
  request = urllib.request.Request(server.url.rstrip("/") + path, data=body, headers=headers,
                                   method=method or ("GET" if body is None else "POST"))
  try:
    with urllib.request.urlopen(request, timeout=300) as response:
      status, raw, kind = response.status, response.read(), response.headers["Content-Type"]
  except urllib.error.HTTPError as e:
    status, raw, kind = e.code, e.read(), e.headers["Content-Type"]
  return status, (json.loads(raw) if "json" in kind else raw.decode())


def test_http_endpoints_and_their_refusals(served):
  status, page = call(served, "/")
  assert status == 200 and "<canvas id=\"canvas\"" in page
  status, info = call(served, "/api/session", {})
  assert status == 200 and info["max_upload_bytes"] == 300 * 2**20 and info["steps"] == 4
  assert info["starts"] == STARTS and info["regressor"] == "random"
  token = info["token"]
  status, opened = call(served, "/api/upload", png_bytes(disc_image()), token,
                        {"X-Filename": "my%20disc.png"})
  assert status == 200 and opened["name"] == "my disc.png"
  status, shown = call(served, "/api/mask", {"image": opened["image"], "box": BOX}, token)
  assert status == 200 and decode(shown["mask"]).shape == (96, 128)
  status, result = call(served, "/api/refine", {"image": opened["image"], "box": BOX}, token)
  assert status == 200 and result["csv"].startswith("file,")
  # Refusals: a bad file (its message, no traceback), another tab's image, no session, too big.
  status, bad = call(served, "/api/upload", b"garbage", token, {"X-Filename": "bad.png"})
  assert status == 400 and bad["error"].startswith("bad.png: cannot be read as an image")
  other = call(served, "/api/session", {})[1]["token"]
  status, refused = call(served, "/api/mask", {"image": opened["image"], "box": BOX}, other)
  assert status == 404 and "not one of this page's images" in refused["error"]
  status, refused = call(served, "/api/mask", {"image": opened["image"], "box": BOX}, "nope")
  assert status == 403 and "reload the page" in refused["error"]
  status, refused = call(served, "/api/upload", b"", token,
                         {"X-Filename": "huge.png", "X-File-Size": str(2**40)})
  assert status == 413 and refused["error"].startswith("huge.png: is 1048576.0 MB, over the")
  status, refused = call(served, "/api/mask", b"x" * (server_lib.MAX_JSON_BYTES + 1), token)
  assert status == 413
  # Another site's page reaching this server through DNS rebinding: its Host is refused.
  status, refused = call(served, "/api/session", {}, headers={"Host": "evil.example:80"})
  assert status == 421
  # A bug is one line, never a traceback.
  status, failed = call(served, "/api/mask", {"image": opened["image"], "box": {"x": 1}}, token)
  assert status in (400, 500) and "Traceback" not in failed["error"]


# ---------------------------------------------------------------------------------------------
# The page in a real browser, served by `python main.py --config configs/app_tiny.py`.
# ---------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def start_app(tmp_path, *flags):
  """main.py's app task on a free port, its temporary folder under tmp_path/tmp; -> (process,
  URL)."""
  (tmp_path / "tmp").mkdir(exist_ok=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path / "tmp"))
  proc = subprocess.Popen(
      [sys.executable, "main.py", "--config", "configs/app_tiny.py", "--config.port=0",
       f"--config.evolve.num_starts={STARTS}", "--workdir", str(tmp_path / "work"), *flags],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(tmp_path / "app.log", "w"),
      text=True)
  line = proc.stdout.readline()  # the address, once the server listens
  assert line.startswith("SAMPOT page: http://127.0.0.1:"), (
      line + (tmp_path / "app.log").read_text()[-3000:])
  return proc, line.split(": ", 1)[1].strip()


def stop_app(proc, tmp_path):
  """SIGTERM ends it cleanly: exit 0, its temporary folder (the uploads) gone."""
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0, (tmp_path / "app.log").read_text()[-3000:]
  assert list((tmp_path / "tmp").glob("sampot-app-*")) == []


def test_main_py_serves_the_page_and_cleans_up(tmp_path):
  proc, url = start_app(tmp_path)
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      assert response.status == 200
      assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    request = urllib.request.Request(url + "api/session", data=b"{}", method="POST")
    token = json.loads(urllib.request.urlopen(request, timeout=60).read())["token"]
    request = urllib.request.Request(url + "api/upload", data=png_bytes(disc_image()), headers={
        "X-Session": token, "X-Filename": "disc.png"}, method="POST")
    assert json.loads(urllib.request.urlopen(request, timeout=300).read())["name"] == "disc.png"
    held = [p for p in (tmp_path / "tmp").rglob("disc.png")]
    assert len(held) == 1 and held[0].read_bytes() == png_bytes(disc_image())
  finally:
    if proc.poll() is None:
      stop_app(proc, tmp_path)
  assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
  assert "The page is at http://127.0.0.1:" in (tmp_path / "app.log").read_text()


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="the browser test needs Debian's chromium and chromium-driver: "
                           "apt-get install -y chromium chromium-driver (.ci/run does)")
def test_in_a_browser_draw_a_box_refine_and_get_refines_mask(tmp_path):
  webdriver = pytest.importorskip("selenium.webdriver")
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top

  images = tmp_path / "images"
  images.mkdir()
  Image.fromarray(disc_image(seed=5)).save(images / "disc.png")
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  proc, url = start_app(tmp_path)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
               "--window-size=1180,800"):
    options.add_argument(flag)
  driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                            options=options)
  state = lambda: driver.find_element(By.ID, "status").get_attribute("data-state")

  def wait_for(wanted, timeout=300):
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda _: state() in (wanted, "error"))
    assert state() == wanted, driver.find_element(By.ID, "message").text

  try:
    driver.get(url)
    wait_for("idle", 60)
    # A bad file: the command line's message in the page, no traceback.
    driver.find_element(By.ID, "upload").send_keys(str(tmp_path / "broken.png"))
    WebDriverWait(driver, 120).until(lambda _: state() == "error")
    message = driver.find_element(By.ID, "message").text
    assert message.startswith("broken.png: cannot be read as an image"), message
    assert "Traceback" not in driver.page_source and "/tmp" not in message

    driver.find_element(By.ID, "upload").send_keys(str(images / "disc.png"))
    wait_for("ready")
    canvas = driver.find_element(By.ID, "canvas")
    width, height = canvas.size["width"], canvas.size["height"]
    assert (width, height) == (640, 480)  # 128 x 96 scaled to the page's 640
    # Drag from (25 %, 20 %) to (75 %, 85 %) of the canvas (offsets from its centre).
    ActionChains(driver).move_to_element_with_offset(
        canvas, -width // 4, -int(height * 0.3)).click_and_hold().move_by_offset(
            width // 4, height // 4).move_by_offset(width // 4, int(height * 0.4)).release(
            ).perform()
    wait_for("masked")
    box = driver.execute_script("return window.sampot.history.at(-1).box")
    assert box[0] == pytest.approx(32, abs=1) and box[3] == pytest.approx(81.6, abs=1), box
    driver.find_element(By.ID, "refine").click()
    wait_for("refined")
    got = driver.execute_script(
        "const p = window.sampot.pending; return {kept: p.kept_mask, initial: p.initial_mask, "
        "evolved: p.evolved, initialBox: p.initial, csv: p.csv, verdict: p.verdict, "
        "text: document.getElementById('readout').innerText}")
    assert got["initialBox"] == box and got["evolved"] != box
    assert "SAMPOT's box" in got["text"] and "safeguards" in got["text"]
    shot = tmp_path / "app_screenshot.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    if os.environ.get("SAMPOT_APP_SCREENSHOT"):
      target = Path(os.environ["SAMPOT_APP_SCREENSHOT"])
      # Fewer colours: the README's copy stays small (< 200 KiB). Written, then renamed.
      partial = target.with_name(f".{target.name}.partial")
      Image.open(shot).convert("RGB").quantize(colors=64).save(partial, format="PNG",
                                                               optimize=True)
      os.replace(partial, target)
      print(f"screenshot copied to {target} ({target.stat().st_size} bytes)")
    driver.find_element(By.ID, "accept").click()
    assert state() == "accepted"
    assert driver.execute_script("return window.sampot.history.at(-1).box") == (
        got["evolved"] if got["verdict"]["accepted"] else box)
  finally:
    driver.quit()
    stop_app(proc, tmp_path)

  # The refine task on the same file, box (as the page sent it) and models.
  prompts = tmp_path / "prompts.csv"
  prompts.write_text("file,x0,y0,x1,y1\ndisc.png," + ",".join(map(repr, box)) + "\n")
  out = tmp_path / "out"
  done = helpers.run_main("--config", "configs/refine_tiny.py", f"--config.images={images}",
                          f"--config.prompts={prompts}", "--config.save_initial_masks=True",
                          f"--config.evolve.num_starts={STARTS}", "--workdir", str(out))
  assert done.returncode == 0, done.stderr[-3000:]
  written = np.asarray(Image.open(out / "masks" / "disc.png")) > 0
  np.testing.assert_array_equal(decode(got["kept"]), written)
  np.testing.assert_array_equal(decode(got["initial"]),
                                np.asarray(Image.open(out / "initial_masks" / "disc.png")) > 0)
  row = helpers.read_rows(out / "results.csv")[0]
  page_row = csv_row(got["csv"])
  for field in ("evolved_x0", "evolved_y0", "evolved_x1", "evolved_y1", "score_evolved",
                "kept", "mask_pixels"):
    assert page_row[field] == row[field], field
