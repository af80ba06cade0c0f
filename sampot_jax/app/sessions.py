"""The web page's work without HTTP: per-tab sessions, their images, a box's mask, SAMPOT.

    app = App(sam, scorer, config)                 # config: configs/app.py
    token = app.new_session()                      # one per browser tab (random)
    info = app.upload(token, "a.png", data)        # or app.open(token, "sub/a.png") (config.images)
    shown = app.mask(token, info["image"], box)    # box (x0, y0, x1, y1) in the image's pixels
    result = app.refine(token, info["image"], box) # SAMPOT: boxes, masks, scores, verdict, CSV row
    app.close()                                    # the temporary folder removed

Each image is encoded once, when opened, and its embedding kept with it (in memory, per
session); masks and refinements reuse it. The models are refine's (sampot/refiner.py with one
image per call; the search's rng key from the image and its box, as refine's), so a refined
mask here is the one `refine` writes for the same image file, box and config.

Safety: uploads are bounded in bytes (config.max_upload_mb, checked before the body is read) and
in pixels (data/images.py's MAX_PIXELS and other size limits, from the header before decoding),
read by the project's own readers, and kept in a temporary folder (removed by close()). A bad
file raises the command line's BadInputError, naming the uploaded file (never the temporary
path). A session's images are reachable only with its token; another session's image id is
refused (ImageNotFoundError). Every result is JSON-ready (masks and pictures as PNG data URLs).
"""
import base64
import collections
import dataclasses
import hashlib
import io
from pathlib import Path
import secrets
import shutil
import tempfile
import threading
import time

from absl import logging
import numpy as np
from PIL import Image as PILImage

from sampot_jax import errors
from sampot_jax.data import images as images_lib
from sampot_jax.sam import predictor
from sampot_jax.sampot import refiner as refiner_lib
from sampot_jax.storage import checkpoints
from sampot_jax.storage import files

DISPLAY_SIDE = 1024  # the picture sent to the page is at most this long (the masks: full size)
MAX_NAME = 200  # characters of an uploaded file's name
BOX_DIM = 4  # the page prompts with boxes (LiteMedSAM is trained on boxes)


class SessionError(errors.UserError, LookupError):
  """A request names no live session of this server (HTTP status 403)."""
  status = 403


class ImageNotFoundError(SessionError):
  """A request names an image that is not its session's (another tab's, or dropped) (404)."""
  status = 404


class TooLargeError(errors.BadInputError):
  """An upload over config.max_upload_mb (413)."""
  status = 413


@dataclasses.dataclass(frozen=True)
class Item:
  """One image's prompt, as sampot.refiner reads it (refine's Item, one 2-D image)."""
  name: str          # the file's name: refine's results key and CSV 'file'
  prompt: np.ndarray  # (4,) float64 box, original pixels
  out: str           # the mask's name without suffix (refine: masks/<out>.png)
  slice: None = None
  line: str = ""     # no prompts CSV here

  @property
  def key(self) -> str:
    return self.name  # refine's row_key for a 2-D image


@dataclasses.dataclass
class Entry:
  """An opened image: decoded, encoded once."""
  name: str
  image: images_lib.Image
  embeddings: object  # (1, g, g, C) jax array
  sha256: str
  folder: Path | None  # its upload's temporary folder (None: from config.images)


@dataclasses.dataclass
class Session:
  token: str
  folder: Path  # its uploads, below the app's temporary folder
  images: collections.OrderedDict = dataclasses.field(default_factory=collections.OrderedDict)


def png_data_url(array: np.ndarray) -> str:
  """(H, W) or (H, W, 3) uint8 -> 'data:image/png;base64,...'."""
  buffer = io.BytesIO()
  PILImage.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_data_url(mask: np.ndarray) -> str:
  """(H, W) bool -> the PNG refine writes (report.overlay.write_mask: 0 / 255), as a data URL."""
  return png_data_url(np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))


def picture(pixels: np.ndarray) -> str:
  """What the page draws the image from: 8 bits as read (DICOM and 16-bit images windowed by
  the readers), shrunk to DISPLAY_SIDE; the page maps its pixels back to the image's."""
  im = PILImage.fromarray(np.ascontiguousarray(pixels))
  if max(im.size) > DISPLAY_SIDE:
    im.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), PILImage.Resampling.BILINEAR)
  return png_data_url(np.asarray(im))


def upload_name(filename: str) -> str:
  """A client's file name -> the name kept (its last path part), or a BadInputError."""
  name = str(filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
  if (not name or name.startswith(".") or len(name) > MAX_NAME
      or any(ord(c) < 32 or c in '<>:"|?*' for c in name)):
    raise errors.BadInputError(filename or "(no name)",
                               f"is not a usable file name (1 to {MAX_NAME} characters, not "
                               "starting with '.', no control characters or <>:\"|?*); rename "
                               "the file")
  suffix = Path(name).suffix.lower()
  if suffix and suffix not in images_lib.IMAGE_SUFFIXES:
    raise errors.BadInputError(name, f"is not an image this tool reads: PNG, JPEG, TIFF or DICOM "
                               f"({', '.join(images_lib.IMAGE_SUFFIXES)}, or a DICOM file "
                               "without a suffix)")
  return name


def output_name(name: str) -> str:
  """'sub/a.dcm' -> 'sub/a' (tasks/common.output_name): the mask's name, as refine's."""
  path = Path(name)
  return (path.parent / path.stem).as_posix() if path.suffix else path.as_posix()


class App:
  """The page's state: sessions (browser tabs) and their encoded images, over one Refiner."""

  def __init__(self, sam, scorer, config, temp_root: str | None = None):
    if config.get("embedding_cache_dir"):
      raise errors.ConfigError("config.embedding_cache_dir is set: the page keeps embeddings "
                               "in memory only (uploads are written nowhere but its temporary "
                               "folder); leave it empty.")
    self.config = config
    self.refiner = refiner_lib.Refiner(sam, scorer, config, batch_size=1)
    self.max_upload_bytes = int(float(config.max_upload_mb) * 2**20)
    if self.max_upload_bytes < 1:
      raise errors.ConfigError(f"config.max_upload_mb={config.max_upload_mb}; it must be > 0.")
    self.max_sessions = int(config.max_sessions)
    self.images_per_session = int(config.images_per_session)
    if self.max_sessions < 1 or self.images_per_session < 1:
      raise errors.ConfigError("config.max_sessions and config.images_per_session must be >= 1.")
    self.images_dir = config.images or None
    if self.images_dir:
      images_lib.list_images(self.images_dir)  # a missing folder stops the start, named
    self.root = Path(tempfile.mkdtemp(prefix="sampot-app-", dir=temp_root))
    self.sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
    self._lock = threading.Lock()        # the sessions
    self._models = threading.Lock()      # one model call at a time (memory, and JAX's order)
    self.encodings = 0                   # images encoded (each once)

  # -- sessions -------------------------------------------------------------------------------

  def new_session(self) -> str:
    """A new tab's random token; the least recently used session beyond max_sessions goes."""
    token = secrets.token_urlsafe(24)
    with self._lock:
      self.sessions[token] = Session(token, Path(tempfile.mkdtemp(dir=self.root)))
      while len(self.sessions) > self.max_sessions:
        _, old = self.sessions.popitem(last=False)
        shutil.rmtree(old.folder, ignore_errors=True)
    return token

  def session(self, token) -> Session:
    """The token's session (a SessionError when none)."""
    with self._lock:
      session = self.sessions.get(str(token or ""))
      if session is None:
        raise SessionError("this page's session is not known to the server (it restarted, or "
                           "dropped the session as the least recently used): reload the page.")
      self.sessions.move_to_end(session.token)
      return session

  def _entry(self, token, image_id) -> tuple[Session, Entry]:
    session = self.session(token)
    with self._lock:
      entry = session.images.get(str(image_id or ""))
      if entry is None:
        raise ImageNotFoundError(f"image {str(image_id)[:40]!r} is not one of this page's "
                                 "images (another tab's, or dropped as the least recently "
                                 "used): open it again.")
      session.images.move_to_end(str(image_id))
      return session, entry

  def info(self) -> dict:
    """What the page shows about the server: limits, models, SAMPOT's settings."""
    settings = self.refiner.settings
    regressor = self.config.regressor
    return dict(max_upload_bytes=self.max_upload_bytes, folder=bool(self.images_dir),
                sam=str(self.refiner.sam.config.variant),
                regressor="random" if regressor.get("random_init") else str(
                    regressor.get("workdir") or regressor.get("name")),
                steps=int(settings.num_steps), starts=int(settings.num_starts),
                rules=list(self.config.safeguards.rules))

  # -- images ---------------------------------------------------------------------------------

  def folder(self, token) -> list[str]:
    """The names of config.images' images (relative paths), [] when none was given."""
    self.session(token)
    return sorted(images_lib.list_images(self.images_dir)) if self.images_dir else []

  def open(self, token, name: str) -> dict:
    """One of config.images' images, by the name `folder` lists."""
    session = self.session(token)
    found = images_lib.list_images(self.images_dir) if self.images_dir else {}
    if str(name) not in found:
      raise errors.BadInputError(name, "is not one of the images of config.images")
    path = found[str(name)]
    image = images_lib.read_image(path)
    return self._add(session, str(name), image, checkpoints.sha256_file(path), None)

  def check_upload(self, filename: str, size: int) -> str:
    """Before the body is read: the name kept, or a BadInputError (bad name, empty, too big)."""
    name = upload_name(filename)
    if size <= 0:
      raise errors.BadInputError(name, "is empty (0 bytes)")
    if size > self.max_upload_bytes:
      raise TooLargeError(
          name, f"is {size / 2**20:.1f} MB, over the {self.max_upload_bytes / 2**20:.0f} MB "
          "this page takes (--config.max_upload_mb); downsample it, or refine it from the "
          "command line (configs/refine.py)")
    return name

  def upload(self, token, filename: str, data: bytes) -> dict:
    """An uploaded file's bytes -> an opened image (see `open`'s result), or a BadInputError
    naming the file as the command line would (its temporary copy removed)."""
    session = self.session(token)
    name = self.check_upload(filename, len(data))
    folder = Path(tempfile.mkdtemp(dir=session.folder))
    path = files.write_bytes(folder / name, data)
    try:
      if not Path(name).suffix and not images_lib.is_dicom(path):
        raise errors.BadInputError(path, "has no suffix and is not DICOM; give PNG, JPEG, TIFF "
                                   "or DICOM")
      images_lib.read_size(path)  # the header's size first: nothing huge is decoded
      image = images_lib.read_image(path)
    except errors.BadInputError as e:
      shutil.rmtree(folder, ignore_errors=True)
      raise errors.BadInputError(name, e.reason.replace(str(path), name)) from None
    except BaseException:
      shutil.rmtree(folder, ignore_errors=True)
      raise
    return self._add(session, name, image, hashlib.sha256(data).hexdigest(), folder)

  def _add(self, session: Session, name: str, image: images_lib.Image, sha256: str,
           folder: Path | None) -> dict:
    t0 = time.time()
    with self._models:
      embeddings = self.refiner.embed([image])
      self.encodings += 1
    seconds = time.time() - t0
    image_id = secrets.token_hex(8)
    with self._lock:
      session.images[image_id] = Entry(name, image, embeddings, sha256, folder)
      while len(session.images) > self.images_per_session:
        _, old = session.images.popitem(last=False)
        if old.folder is not None:
          shutil.rmtree(old.folder, ignore_errors=True)
    h, w = image.size
    logging.info("Opened %s (%dx%d, %s): encoded in %.2f s.", name, w, h, image.intensity,
                 seconds)
    return dict(image=image_id, name=name, width=w, height=h, intensity=image.intensity,
                picture=picture(image.pixels), seconds=round(seconds, 3))

  # -- prompts --------------------------------------------------------------------------------

  def _item(self, entry: Entry, box) -> Item:
    try:
      prompt = np.asarray(box, np.float64).reshape(-1)
      if prompt.shape != (BOX_DIM,) or not np.isfinite(prompt).all():
        raise ValueError(f"a box is four finite numbers (x0, y0, x1, y1); got {box!r:.80}")
      predictor.check_prompts(prompt[None], entry.image.size, ids=[entry.name])
    except (ValueError, TypeError) as e:
      raise errors.BadInputError(entry.name, str(e)) from None
    return Item(entry.name, prompt, output_name(entry.name))

  def mask(self, token, image_id, box) -> dict:
    """A box's mask at the image's size (refine's initial mask for it), SAM's IoU and the score
    SAMPOT ranks it by (refine's score_initial), no evolution."""
    _, entry = self._entry(token, image_id)
    item = self._item(entry, box)
    t0 = time.time()
    with self._models:
      out = self.refiner.preview(item, entry.image, entry.embeddings)
    seconds = time.time() - t0
    return files.json_ready(dict(
        box=item.prompt, score=out["score"], iou=out["iou"], mask=mask_data_url(out["mask"]),
        mask_pixels=int(out["mask"].sum()), seconds=round(seconds, 3)))

  def refine(self, token, image_id, box) -> dict:
    """SAMPOT from the box: refine's result for this image file and box (boxes, masks, scores
    along the steps, the safeguards' verdict) and its results.csv row (and CSV text)."""
    _, entry = self._entry(token, image_id)
    item = self._item(entry, box)
    t0 = time.time()
    with self._models:
      out = self.refiner.refine_batch([item], [entry.image], entry.embeddings)[0]
    verdict = refiner_lib.judge(self.config, out)
    seconds = time.time() - t0
    row = refiner_lib.results_row(item, entry.image, BOX_DIM, out, verdict, seconds)
    # Columns of refine's row that name its files: here the page's downloads.
    del row["line"], row["overlay"]
    row.update(mask=f"{Path(item.out).name}_mask.png", image_sha256=entry.sha256)
    accepted = verdict["accepted"]
    kept_mask = out["best_mask"] if accepted else out["initial_mask"]
    return files.json_ready(dict(
        initial=out["initial"], evolved=out["best"],
        kept=out["best"] if accepted else out["initial"],
        initial_score=out["initial_score"], evolved_score=out["best_score"],
        kept_score=out["best_score"] if accepted else out["initial_score"],
        initial_iou=out["initial_iou"], evolved_iou=out["best_iou"],
        best_step=out["best_step"], best_start=out["best_start"], nan_step=out["nan_step"],
        scores=out["scores"], verdict=verdict,
        initial_mask=mask_data_url(out["initial_mask"]),
        evolved_mask=mask_data_url(out["best_mask"]), kept_mask=mask_data_url(kept_mask),
        row=row, csv=files.csv_text([row]), seconds=round(seconds, 3),
        seconds_sampot=round(out["seconds"]["evolve"], 3)))  # of `seconds`: evolve and decode

  def warm_up(self) -> float:
    """Compiles the mask and SAMPOT programs on a blank image (seconds): the first box is then
    as fast as the next (the final masks' upsampling still compiles once per image size)."""
    t0 = time.time()
    side = 64
    pixels = np.zeros((side, side), np.uint8)
    image = images_lib.Image(pixels, images_lib.gray_of(pixels), "8-bit")
    with self._models:
      embeddings = self.refiner.embed([image])
      item = Item("warm-up", np.array([8.0, 8.0, 48.0, 48.0]), "warm-up")
      self.refiner.preview(item, image, embeddings)
      self.refiner.refine_batch([item], [image], embeddings)
    return time.time() - t0

  def close(self) -> None:
    """Every session dropped and the temporary folder (uploads) removed."""
    with self._lock:
      self.sessions.clear()
    shutil.rmtree(self.root, ignore_errors=True)

