"""The page behind HTTP: Python's ThreadingHTTPServer, one HTML page, JSON endpoints.

    server = make_server(app, host="127.0.0.1", port=0)   # port 0: a free one
    server.url                                            # http://127.0.0.1:PORT/
    server.serve_forever()                                # in a thread, or until Ctrl-C

Endpoints (every /api/ request but /api/session carries the tab's token in X-Session):

    GET  /                  the page (sampot_jax/app/page.html)
    POST /api/session       a new tab's token, the server's limits and models (App.info)
    GET  /api/folder        config.images' image names
    POST /api/open          {"name"}: one of them, opened (App.open)
    POST /api/upload        the file's bytes; X-Filename (URL-encoded), X-File-Size (App.upload)
    POST /api/mask          {"image", "box"}: its mask and score (App.mask)
    POST /api/refine        {"image", "box"}: SAMPOT (App.refine)

A user error is a JSON {"error": message} (the command line's text) with 400 (bad input), 404
(not this session's image), 403 (no such session), 413 (too large) or 421 (a Host that is not
this server's: a page of another site reaching it through DNS rebinding); anything else is
logged with its traceback and answered 500 with a one-line message, never the traceback.
Requests larger than their limit are refused before their body is read.
"""
import http.server
import ipaddress
import json
from pathlib import Path
import urllib.parse

from absl import logging

from sampot_jax import errors
from sampot_jax.app import sessions

PAGE = Path(__file__).with_name("page.html")
MAX_JSON_BYTES = 64 * 1024  # a box request is ~100 bytes
# The page loads nothing from elsewhere; its script and style are inline.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; img-src data: blob:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class HttpError(Exception):
  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def status_of(error: errors.UserError) -> int:
  """403: no such session; 404: not its image; 413: too large (sessions' errors); else 400."""
  return int(getattr(error, "status", 400))


def loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return host == "localhost"


class Handler(http.server.BaseHTTPRequestHandler):
  """Routes requests to the App (set on the server: self.server.app)."""
  protocol_version = "HTTP/1.1"
  server_version = "sampot-app"
  sys_version = ""

  # -- plumbing -------------------------------------------------------------------------------

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.debug("%s " + format, self.address_string(), *args)

  def _send(self, status: int, body: bytes, content_type: str):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    for key, value in SECURITY_HEADERS.items():
      self.send_header(key, value)
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _json(self, status: int, obj) -> None:
    self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

  def _length(self) -> int:
    try:
      return max(0, int(self.headers.get("Content-Length") or 0))
    except ValueError:
      raise HttpError(400, "a request with a bad Content-Length") from None

  def _body(self, limit: int) -> bytes:
    length = self._length()
    if length > limit:
      self.close_connection = True  # its body is not read
      raise HttpError(413, f"a request of {length} bytes, over the {limit} this endpoint takes")
    return self.rfile.read(length) if length else b""

  def _request(self) -> dict:
    try:
      found = json.loads(self._body(MAX_JSON_BYTES) or b"{}")
    except ValueError:
      raise HttpError(400, "the request is not JSON") from None
    if not isinstance(found, dict):
      raise HttpError(400, "the request is not a JSON object")
    return found

  def _token(self) -> str:
    return self.headers.get("X-Session", "")

  def _check_host(self) -> None:
    """On a loopback address, a Host header naming another server is a page of another site
    that reached this one by DNS rebinding: refused."""
    if not loopback(self.server.server_address[0]):
      return
    host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
    if not loopback(host):
      raise HttpError(421, f"this page answers on {self.server.url} only")

  def _handle(self, route):
    try:
      self._check_host()
      route()
    except HttpError as e:
      self._json(e.status, {"error": str(e)})
    except errors.UserError as e:
      self._json(status_of(e), {"error": str(e).strip()})
    except (BrokenPipeError, ConnectionResetError):
      self.close_connection = True
    except Exception as e:  # pylint: disable=broad-except  # a bug: logged, never shown
      logging.exception("%s %s failed", self.command, self.path)
      self._json(500, {"error": f"the server failed ({type(e).__name__}); its log says where. "
                                "Please report it."})

  # -- routes ---------------------------------------------------------------------------------

  def do_GET(self):  # pylint: disable=invalid-name
    self._handle(self._get)

  def do_POST(self):  # pylint: disable=invalid-name
    self._handle(self._post)

  def _get(self):
    path = urllib.parse.urlsplit(self.path).path
    app = self.server.app
    if path in ("/", "/index.html"):
      self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
    elif path == "/api/folder":
      self._json(200, {"images": app.folder(self._token())})
    else:
      raise HttpError(404, f"no page at {path[:100]}")

  def _post(self):
    path = urllib.parse.urlsplit(self.path).path
    app = self.server.app
    if path == "/api/upload":
      self._upload()
      return
    request = self._request()
    if path == "/api/session":
      self._json(200, dict(token=app.new_session(), **app.info()))
    elif path == "/api/open":
      self._json(200, app.open(self._token(), request.get("name", "")))
    elif path == "/api/mask":
      self._json(200, app.mask(self._token(), request.get("image"), request.get("box")))
    elif path == "/api/refine":
      self._json(200, app.refine(self._token(), request.get("image"), request.get("box")))
    else:
      raise HttpError(404, f"no endpoint at {path[:100]}")

  def _upload(self):
    app = self.server.app
    app.session(self._token())  # no session: refused before the body is read
    filename = urllib.parse.unquote(self.headers.get("X-Filename", ""))
    length = self._length()
    try:  # the page declares a file's size without sending it when it is over the limit
      declared = int(self.headers.get("X-File-Size") or length)
    except ValueError:
      declared = length
    try:
      app.check_upload(filename, max(length, declared))
    except errors.UserError:
      self.close_connection = True  # the body (if any) is not read
      raise
    self._json(200, app.upload(self._token(), filename, self._body(app.max_upload_bytes)))


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, app: sessions.App, host: str, port: int):
    super().__init__((host, int(port)), Handler)
    self.app = app

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def make_server(app: sessions.App, host: str = "127.0.0.1", port: int = 0) -> Server:
  """Bound (port 0: a free one), not yet serving; an address in use is a ConfigError."""
  try:
    return Server(app, host, port)
  except OSError as e:
    raise errors.ConfigError(f"cannot serve on {host}:{port} ({e.strerror or e}); give another "
                             "--config.port (0 picks a free one) or --config.host.") from e
