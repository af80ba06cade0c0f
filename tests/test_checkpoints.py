"""sampot_jax.storage.checkpoints: download against a local HTTP server, Orbax I/O."""
import hashlib
import http.server
import os
import socket
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampot_jax import errors
from sampot_jax.storage import checkpoints
from sampot_jax.storage.checkpoints import (cache_dir,
                                    fetch_checkpoint, load_params, save_params,
                                    sha256_file)

PAYLOAD = bytes(range(256)) * 300 + b"tail"  # 76.8 kB
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
GOOD_NAME = f"tiny_{SHA256[:6]}.pth"
# A name whose prefix is not the payload's hash.
WRONG_NAME = f"tiny_{format(int(SHA256[:6], 16) ^ 1, '06x')}.pth"


class _Handler(http.server.BaseHTTPRequestHandler):
  """/full/NAME: the payload; /short/NAME: Content-Length promises more bytes
  than are sent before the connection closes; anything else: 404."""
  requests = []

  def do_GET(self):  # noqa: N802 (http.server's name)
    self.requests.append(self.path)
    kind = self.path.split("/")[1]
    if kind not in ("full", "short"):
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header("Content-Type", "application/octet-stream")
    extra = 1000 if kind == "short" else 0
    self.send_header("Content-Length", str(len(PAYLOAD) + extra))
    self.end_headers()
    self.wfile.write(PAYLOAD if kind == "full" else PAYLOAD[:len(PAYLOAD) // 2])
    self.close_connection = True

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server():
  """Base URL of an HTTP server on 127.0.0.1 (ephemeral port)."""
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


@pytest.fixture
def cache(tmp_path):
  path = tmp_path / "cache"
  path.mkdir()
  return path


def test_download_success_then_cached(server, cache):
  url = f"{server}/full/{GOOD_NAME}"
  path = fetch_checkpoint("vit_b", cache=cache, url=url)
  assert path == cache / GOOD_NAME
  assert path.read_bytes() == PAYLOAD
  assert sha256_file(path) == SHA256
  assert sorted(os.listdir(cache)) == [GOOD_NAME]  # No temp file left.
  before = len(_Handler.requests)
  assert fetch_checkpoint("vit_b", cache=cache, url=url) == path
  assert len(_Handler.requests) == before  # Served from the cache.


def test_a_wrong_file_under_the_official_name_is_not_used(cache):
  """A file in the cache is hashed against the prefix in its name before it is handed out."""
  name = checkpoints.SAM_CHECKPOINTS["vit_b"][0]  # sam_vit_b_01ec64.pth
  (cache / name).write_bytes(PAYLOAD)  # not the official file
  with pytest.raises(errors.CachedFileMismatch) as error:
    fetch_checkpoint("vit_b", cache=cache, progress=False)
  message = str(error.value)
  assert str(cache / name) in message and "01ec64" in message and SHA256 in message
  assert "Delete it" in message
  assert (cache / name).read_bytes() == PAYLOAD  # left as it was
  # A mirror's name works the same way: the right prefix passes, without a download.
  (cache / GOOD_NAME).write_bytes(PAYLOAD)
  assert fetch_checkpoint("vit_b", cache=cache, url=f"http://127.0.0.1:9/{GOOD_NAME}") == (
      cache / GOOD_NAME)
  (cache / WRONG_NAME).write_bytes(PAYLOAD)
  with pytest.raises(errors.CachedFileMismatch, match=WRONG_NAME[5:11]):
    fetch_checkpoint("vit_b", cache=cache, url=f"http://127.0.0.1:9/{WRONG_NAME}")


def test_truncated_transfer_leaves_nothing(server, cache):
  url = f"{server}/short/{GOOD_NAME}"
  with pytest.raises(errors.DownloadError, match="cut short") as e:
    fetch_checkpoint("vit_b", cache=cache, url=url, progress=False)
  assert f"{len(PAYLOAD) // 2} of {len(PAYLOAD) + 1000} bytes" in str(e.value)
  assert os.listdir(cache) == []


def test_wrong_hash_leaves_nothing(server, cache):
  url = f"{server}/full/{WRONG_NAME}"
  with pytest.raises(errors.DownloadError, match="does not start with") as e:
    fetch_checkpoint("vit_b", cache=cache, url=url, progress=False)
  assert SHA256 in str(e.value)
  assert os.listdir(cache) == []


def test_http_error_leaves_nothing(server, cache):
  url = f"{server}/gone/{GOOD_NAME}"
  with pytest.raises(errors.DownloadError, match="HTTP 404"):
    fetch_checkpoint("vit_b", cache=cache, url=url, progress=False)
  assert os.listdir(cache) == []


def test_no_network_says_where_to_put_the_file(cache):
  with socket.socket() as s:  # A port that nothing listens on.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/segment_anything/{GOOD_NAME}"
  with pytest.raises(errors.DownloadError) as e:
    fetch_checkpoint("vit_b", cache=cache, url=url, progress=False)
  message = str(e.value)
  assert f"could not be downloaded from {url}" in message
  assert f"put it at {cache / GOOD_NAME}" in message
  assert "SAMPOT_CACHE" in message
  assert os.listdir(cache) == []


def test_sampot_cache_env_is_honoured(server, tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv("SAMPOT_CACHE", raising=False)
  assert cache_dir() == tmp_path / "home" / ".cache" / "sampot_jax"
  monkeypatch.setenv("SAMPOT_CACHE", str(tmp_path / "elsewhere"))
  assert cache_dir() == tmp_path / "elsewhere"
  path = fetch_checkpoint("vit_b", url=f"{server}/full/{GOOD_NAME}",
                          progress=False)
  assert path == tmp_path / "elsewhere" / GOOD_NAME and path.is_file()
  assert not (tmp_path / "home").exists()


def test_official_table_and_bad_arguments():
  for variant, (name, url) in checkpoints.SAM_CHECKPOINTS.items():
    assert url == checkpoints.SAM_URL_BASE + name and variant in name
  with pytest.raises(ValueError, match="vit_x"):
    fetch_checkpoint("vit_x")
  with pytest.raises(ValueError, match="no sha256 prefix"):
    fetch_checkpoint("vit_b", url="http://127.0.0.1:9/weights.pth")


def _params():
  rng = np.random.default_rng(0)
  return {
      "image_encoder": {
          "patch_embed": {"kernel": rng.standard_normal((16, 16, 3, 8)).astype(np.float32),
                          "bias": jnp.arange(8, dtype=jnp.float32)},
          "blocks_0": {"norm1": {"scale": np.ones(8, np.float32)}},
          "pos_embed": rng.standard_normal((1, 4, 4, 8)).astype(np.float32),
      },
      "mask_decoder": {"iou_token": {"embedding": np.full((1, 8), -0.5, np.float32)},
                       "temperature": np.float32(0.25)},
  }


MANIFEST = {"variant": "vit_b", "source_sha256": "01ec64" + "0" * 58,
            "num_tensors": 6, "num_params": 3 * 16 * 16 * 8 + 8 + 8 + 128 + 8 + 1}


def test_params_round_trip_exact(tmp_path):
  params = _params()
  out = save_params(params, tmp_path / "sam_vit_b", MANIFEST)
  assert out == tmp_path / "sam_vit_b"
  assert sorted(os.listdir(tmp_path)) == ["sam_vit_b"]  # No temp siblings.
  restored, manifest = load_params(out)
  assert manifest == MANIFEST
  assert jax.tree.structure(restored) == jax.tree.structure(params)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
    want = np.asarray(want)
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_save_refuses_to_overwrite(tmp_path):
  out = save_params(_params(), tmp_path / "p", {"v": 1})
  with pytest.raises(FileExistsError, match="overwrite=True"):
    save_params({"w": np.zeros(2, np.float32)}, out, {"v": 2})
  assert load_params(out)[1] == {"v": 1}
  save_params({"w": np.zeros(2, np.float32)}, out, {"v": 2}, overwrite=True)
  params, manifest = load_params(out)
  assert manifest == {"v": 2} and list(params) == ["w"]
  assert sorted(os.listdir(tmp_path)) == ["p"]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
  def broken(path, obj):
    raise OSError(f"disk full while writing {path}")
  monkeypatch.setattr(checkpoints, "_write_json", broken)
  with pytest.raises(OSError, match="disk full"):
    save_params(_params(), tmp_path / "p", MANIFEST)
  assert os.listdir(tmp_path) == []


def _orbax_files(directory):
  return [p for p in (directory / "params").rglob("*") if p.is_file()]


def _remove_manifest(d):
  (d / "manifest.json").unlink()


def _remove_orbax_metadata(d):
  (d / "params" / "_METADATA").unlink()


def _remove_orbax_data(d):
  for p in _orbax_files(d):
    if p.parent.name == "d":
      p.unlink()


def _flip_largest_orbax_file(d):
  # Orbax restores flipped bytes silently; the crc32 index must catch it.
  path = max(_orbax_files(d), key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_remove_manifest, _remove_orbax_metadata,
                                    _remove_orbax_data, _flip_largest_orbax_file])
def test_damaged_directory_is_reported(tmp_path, damage):
  out = save_params(_params(), tmp_path / "p", MANIFEST)
  damage(out)
  with pytest.raises(errors.ParamsDirError) as e:
    load_params(out)
  message = str(e.value)
  assert str(out) in message and "python -m ports.sam" in message


def test_missing_directory_is_reported(tmp_path):
  with pytest.raises(errors.ParamsDirError, match="no such directory"):
    load_params(tmp_path / "never_written")


# What save_params may replace: a previous port (with overwrite) or an empty
# folder; never a file, a link or a folder holding anything else.


def test_save_never_replaces_a_file(tmp_path):
  source = tmp_path / "sam_vit_b_01ec64.pth"
  source.write_bytes(b"the only copy of the weights")
  for overwrite in (False, True):
    with pytest.raises(FileExistsError, match="is a file") as e:
      save_params(_params(), source, MANIFEST, overwrite=overwrite)
    assert str(source) in str(e.value)
  assert source.read_bytes() == b"the only copy of the weights"
  assert sorted(os.listdir(tmp_path)) == [source.name]  # No temp siblings.


def test_save_never_replaces_a_folder_of_other_files(tmp_path, monkeypatch):
  work = tmp_path / "work"
  (work / "notes").mkdir(parents=True)
  (work / "notes" / "todo.txt").write_text("keep me")
  (work / "manifest.json").write_text("{}")  # A port's name among others is no port.
  monkeypatch.chdir(work)
  for out in (".", work, work / "notes"):
    with pytest.raises(FileExistsError, match="not a params directory") as e:
      save_params(_params(), out, MANIFEST, overwrite=True)
    assert "not even with overwrite" in str(e.value)
  assert (work / "notes" / "todo.txt").read_text() == "keep me"
  assert sorted(os.listdir(work)) == ["manifest.json", "notes"]
  assert sorted(os.listdir(tmp_path)) == ["work"]


def test_save_never_replaces_a_link(tmp_path):
  port = save_params(_params(), tmp_path / "p", MANIFEST)
  link = tmp_path / "link"
  link.symlink_to(port)
  with pytest.raises(FileExistsError, match="symbolic link"):
    save_params(_params(), link, {"v": 2}, overwrite=True)
  assert link.is_symlink() and load_params(port)[1] == MANIFEST


def test_save_replaces_a_previous_port_even_a_damaged_one(tmp_path):
  out = save_params(_params(), tmp_path / "p", MANIFEST)
  (out / "params_index.json").unlink()  # Damaged, still recognisably a port.
  assert checkpoints.is_params_dir(out)
  save_params({"w": np.ones(2, np.float32)}, out, {"v": 2}, overwrite=True)
  assert load_params(out)[1] == {"v": 2}
  assert sorted(os.listdir(tmp_path)) == ["p"]


def test_save_fills_an_empty_folder(tmp_path):
  out = tmp_path / "empty"
  out.mkdir()
  save_params(_params(), out, MANIFEST)  # Nothing to lose: no overwrite needed.
  assert load_params(out)[1] == MANIFEST
  assert sorted(os.listdir(tmp_path)) == ["empty"]
