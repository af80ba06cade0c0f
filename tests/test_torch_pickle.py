"""sampot_jax.sam.port.torch_pickle against files written by the real torch.save."""
import builtins
import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sampot_jax import errors

torch = pytest.importorskip("torch")  # Only the reference writer.

from sampot_jax.sam.port.torch_pickle import load_state_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _to_numpy(t):
  t = t.detach().resolve_conj().resolve_neg()
  if t.dtype == torch.bfloat16:  # numpy has no bfloat16: compare the bits.
    import ml_dtypes
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def _assert_same(loaded, reference):
  assert list(loaded) == list(reference)
  for key, ref in reference.items():
    got, want = loaded[key], _to_numpy(ref)
    assert got.dtype == want.dtype, key
    assert got.shape == want.shape, key
    assert got.tobytes() == np.ascontiguousarray(want).tobytes(), key


def _reference_state_dict():
  torch.manual_seed(0)
  model = torch.nn.Sequential(
      torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
  sd = model.state_dict()  # Has an int64 num_batches_tracked and _metadata.
  base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
  sd["view.offset_transposed"] = base[1:, 2:5].t()  # offset 10, strides (1, 8)
  sd["view.same_storage"] = base[::2, ::3]  # shares base's storage
  sd["view.expanded"] = torch.tensor([1.5, -2.0]).expand(3, 2)  # stride 0
  sd["float16"] = torch.randn(2, 3).half()
  sd["bfloat16"] = torch.randn(7).bfloat16()
  sd["float64"] = torch.randn(2, dtype=torch.float64)
  sd["int64"] = torch.arange(-3, 4)
  sd["int32"] = torch.tensor([2**31 - 1, -5], dtype=torch.int32)
  sd["uint8"] = torch.tensor([0, 255], dtype=torch.uint8)
  sd["bool"] = torch.tensor([[True, False], [False, True]])
  sd["uint16"] = torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16)
  sd["complex64.conj"] = torch.tensor([1 + 2j, -3j], dtype=torch.complex64).conj()
  sd["neg_view"] = torch._neg_view(torch.tensor([1.0, -2.0]))
  sd["scalar"] = torch.tensor(3.25)
  sd["empty"] = torch.zeros(0, 4)
  return sd


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(path, state_dict) of a real torch.save file."""
  sd = _reference_state_dict()
  path = tmp_path_factory.mktemp("pth") / "model.pth"
  torch.save(sd, path)
  return path, sd


def test_round_trip_equals_torch_exactly(saved):
  path, sd = saved
  loaded = load_state_dict(path)
  assert type(loaded) is dict
  _assert_same(loaded, sd)
  # Independent, writable, C-ordered copies, even of views of one storage.
  for array in loaded.values():
    assert array.flags.c_contiguous and array.flags.writeable and array.flags.owndata
  loaded["view.offset_transposed"][...] = -1
  assert loaded["view.same_storage"][0, 0] == 0


def test_agrees_with_torch_load(saved):
  path, _ = saved
  _assert_same(load_state_dict(path), torch.load(path, weights_only=True))


def test_parameters_and_str_path(tmp_path):
  params = {"p": torch.nn.Parameter(torch.randn(2, 2)), "t": torch.ones(3)}
  path = tmp_path / "params.pth"
  torch.save(params, path)
  _assert_same(load_state_dict(str(path)), params)


def test_big_endian_archive(tmp_path):
  """Rewrites a torch archive as a big-endian machine would have written it."""
  sd = {"f32": torch.randn(3), "bf16": torch.randn(3).bfloat16(),
        "i64": torch.arange(4), "c64": torch.tensor([1 + 2j, 3 - 4j])}
  little = tmp_path / "little.pth"
  torch.save(sd, little)
  swap_as = {"0": np.float32, "1": np.uint16, "2": np.int64, "3": np.float32}
  big = tmp_path / "big.pth"
  with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      parts = info.filename.split("/")
      if parts[1:] == ["byteorder"]:
        data = b"big"
      elif parts[1] == "data" and len(parts) == 3:
        data = np.frombuffer(data, swap_as[parts[2]]).byteswap().tobytes()
      dst.writestr(info, data)
  _assert_same(load_state_dict(big), sd)


def test_missing_file(tmp_path):
  with pytest.raises(errors.CheckpointError, match="no such file") as e:
    load_state_dict(tmp_path / "absent.pth")
  assert "absent.pth" in str(e.value)


def test_non_zip_file(tmp_path):
  path = tmp_path / "notes.pth"
  path.write_text("these are not weights\n")
  with pytest.raises(errors.CheckpointError, match="not a zip archive") as e:
    load_state_dict(path)
  assert str(path) in str(e.value)


def test_bare_pickle_is_not_read(tmp_path):
  path = tmp_path / "bare.pth"
  path.write_bytes(pickle.dumps({"w": [1.0]}))
  with pytest.raises(errors.CheckpointError, match="bare pickle"):
    load_state_dict(path)


def test_legacy_format_says_resave(tmp_path):
  path = tmp_path / "legacy.pth"
  torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
  with pytest.raises(errors.CheckpointError, match="legacy.*Re-save"):
    load_state_dict(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_file(saved, tmp_path, fraction):
  path, _ = saved
  data = path.read_bytes()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(data[:int(len(data) * fraction)])
  with pytest.raises(errors.CheckpointError, match="truncated or damaged") as e:
    load_state_dict(cut)
  assert str(cut) in str(e.value)


def test_corrupted_record_fails_crc(saved, tmp_path):
  path, _ = saved
  with zipfile.ZipFile(path) as z:
    info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
  data = bytearray(path.read_bytes())
  # The record's bytes start after its local header (30 bytes + name + extra).
  header = data[info.header_offset:info.header_offset + 30]
  start = (info.header_offset + 30 + int.from_bytes(header[26:28], "little")
           + int.from_bytes(header[28:30], "little"))
  data[start] ^= 0xFF
  bad = tmp_path / "flipped.pth"
  bad.write_bytes(bytes(data))
  with pytest.raises(errors.CheckpointError, match="damaged"):
    load_state_dict(bad)


def test_missing_storage_record(saved, tmp_path):
  path, _ = saved
  partial = tmp_path / "partial.pth"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(partial, "w") as dst:
    for info in src.infolist():
      if not info.filename.endswith("/data/3"):
        dst.writestr(info, src.read(info))
  with pytest.raises(errors.CheckpointError, match="data/3 is missing"):
    load_state_dict(partial)


class _RunsCode:
  """Unpickling this with plain pickle calls exec(source)."""

  def __init__(self, source):
    self.source = source

  def __reduce__(self):
    return (builtins.exec, (self.source,))


class _RunsShell:
  """Unpickling this with plain pickle calls os.system(command)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def _torch_like_archive(path, pickle_bytes):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle_bytes)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")


def _payload(kind, marker):
  """(object whose unpickling creates `marker`, the global it pickles as)."""
  if kind == "exec":
    # Protocol 2 names the module __builtin__ (the Python 2 spelling).
    return (_RunsCode(f"open({str(marker)!r}, 'w').close()"),
            "__builtin__.exec")
  # os.system pickles as posix.system on Linux.
  return _RunsShell(f"touch '{marker}'"), f"{os.system.__module__}.system"


@pytest.mark.parametrize("kind", ["exec", "os.system"])
def test_crafted_pickle_is_refused_and_not_run(tmp_path, kind):
  marker = tmp_path / "MARKER"
  payload, refused = _payload(kind, marker)
  # Disguised as a state_dict (OrderedDict is admitted), payload second.
  evil = tmp_path / "evil.pth"
  _torch_like_archive(evil, pickle.dumps(
      collections.OrderedDict([("weight", [1.0, 2.0]), ("bias", payload)]),
      protocol=2))

  # The payload is live: plain pickle.loads runs it.
  subprocess.run(
      [sys.executable, "-c",
       "import pickle, sys, zipfile; "
       "pickle.loads(zipfile.ZipFile(sys.argv[1]).read('archive/data.pkl'))",
       str(evil)], check=True, cwd=tmp_path)
  assert marker.exists()
  marker.unlink()

  with pytest.raises(errors.CheckpointError) as e:
    load_state_dict(evil)
  message = str(e.value)
  assert f"'{refused}'" in message, message
  assert "NOT executed" in message and str(evil) in message
  assert not marker.exists()


@pytest.mark.parametrize("kind", ["exec", "os.system"])
def test_payload_inside_real_torch_save_is_refused(tmp_path, kind):
  """A genuine torch archive (real tensor storages) that also carries a payload."""
  marker = tmp_path / "MARKER"
  payload, refused = _payload(kind, marker)
  evil = tmp_path / "evil.pth"
  torch.save({"weight": torch.ones(2), "bias": payload}, evil)
  torch.load(evil, weights_only=False)  # Live under an unrestricted load too.
  assert marker.exists()
  marker.unlink()
  with pytest.raises(errors.CheckpointError, match=f"'{refused}'.*NOT executed"):
    load_state_dict(evil)
  assert not marker.exists()


def test_crafted_pickle_cannot_tamper_with_later_loads(saved, tmp_path):
  """BUILD can set attributes on whatever find_class returns; those objects are
  made per load, so a hostile file cannot change how the next file decodes."""
  hostile = (b"\x80\x02ctorch\nFloatStorage\n"           # push the stand-in
             b"N}X\x05\x00\x00\x00dtypeK\x01s\x86b"     # BUILD: setattr dtype=1
             b"0}.")                                     # pop; return {}
  path = tmp_path / "hostile.pth"
  _torch_like_archive(path, hostile)
  assert load_state_dict(path) == {}
  good, sd = saved
  _assert_same(load_state_dict(good), sd)


def test_refuses_non_tensor_state(tmp_path):
  path = tmp_path / "mixed.pth"
  torch.save({"w": torch.ones(1), "step": 7}, path)
  with pytest.raises(errors.CheckpointError, match=r"\['step'\].*flat state_dict"):
    load_state_dict(path)


def test_reader_does_not_import_torch(saved):
  path, sd = saved
  code = ("import sys; from sampot_jax.sam.port.torch_pickle import load_state_dict; "
          "d = load_state_dict(sys.argv[1]); "
          "assert 'torch' not in sys.modules, 'torch was imported'; "
          "print(len(d))")
  out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO,
                       check=True, capture_output=True, text=True)
  assert out.stdout.strip() == str(len(sd))


# ---------------------------------------------------------------------------
# Declared sizes and strides are bounded by the storage's real bytes, and what
# the reader allocates by the file's size, before anything is allocated.


class _Storage:
  def __init__(self, key, numel):
    self.key, self.numel = key, numel


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, size, stride)


class _CraftingPickler(pickle.Pickler):
  """Pickles _Tensor as torch.save does (_rebuild_tensor_v2 over a FloatStorage
  persistent id), with whatever offset, size and stride the test declares."""

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, _Tensor):
      return (torch._utils._rebuild_tensor_v2,
              obj.args + (False, collections.OrderedDict()))
    return NotImplemented


def _crafted_pth(path, tensors, storages, numels=None):
  """tensors: {name: (storage key, offset, size, stride)}; storages: {key: float32
  values, or an int n: n zeros, deflated}; numels: {key: numel the pickle declares}."""
  numels = numels or {}
  handles = {key: _Storage(key, numels.get(key, values if isinstance(values, int)
                                           else len(values)))
             for key, values in storages.items()}
  buffer = io.BytesIO()
  _CraftingPickler(buffer, protocol=2).dump(collections.OrderedDict(
      (name, _Tensor(handles[key], offset, size, stride))
      for name, (key, offset, size, stride) in tensors.items()))
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buffer.getvalue())
    z.writestr("archive/byteorder", "little")
    for key, values in storages.items():
      if not isinstance(values, int):
        z.writestr(f"archive/data/{key}", np.asarray(values, np.float32).tobytes())
        continue
      info = zipfile.ZipInfo(f"archive/data/{key}")
      info.compress_type = zipfile.ZIP_DEFLATED
      with z.open(info, "w") as f:
        chunk = bytes(1 << 20)
        for start in range(0, values * 4, len(chunk)):
          f.write(chunk[:min(len(chunk), values * 4 - start)])
    z.writestr("archive/version", "3\n")
  return path


def _load_in_small_memory(path, headroom=1 << 30):
  """Loads `path` in a child whose address space may grow by `headroom` only;
  returns its stdout: 'OK <names>' or the errors.CheckpointError's message."""
  code = (
      "import resource, sys\n"
      "from sampot_jax import errors\n"
      "from sampot_jax.sam.port.torch_pickle import load_state_dict\n"
      "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
      f"resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, size + {headroom}))\n"
      "try:\n"
      "  print('OK', sorted(load_state_dict(sys.argv[1])))\n"
      "except errors.CheckpointError as e:\n"
      "  print(e)\n")
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
  out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout


def test_stride_0_expansion_of_one_element_is_refused_before_allocating(tmp_path):
  """1.6 KB that declares a (65536, 65536) float32 tensor (16 GiB) over one element."""
  path = _crafted_pth(tmp_path / "bomb.pth", {"w": ("0", 0, (65536, 65536), (0, 0))},
                      {"0": [1.0]})
  assert path.stat().st_size < 2000
  message = _load_in_small_memory(path)
  assert message.startswith(str(path)), message
  assert "refused before allocating" in message and "16.0 GiB" in message, message
  assert "stride 0" in message and "contiguous()" in message, message
  # The same from torch itself: expand() of one element, saved as a view.
  saved = tmp_path / "expanded.pth"
  torch.save({"w": torch.ones(1).expand(65536, 65536)}, saved)
  assert "refused before allocating" in _load_in_small_memory(saved)


def test_overlapping_as_strided_view_is_refused(tmp_path):
  path = tmp_path / "overlap.pth"
  torch.save({"w": torch.zeros(131071).as_strided((65536, 65536), (1, 1))}, path)
  message = _load_in_small_memory(path)
  assert "refused before allocating" in message and "as_strided" in message, message


def test_many_views_of_one_storage_are_bounded_by_the_file(tmp_path):
  base = torch.arange(1 << 18, dtype=torch.float32)  # 1 MiB
  path = tmp_path / "views.pth"
  torch.save({f"v{i}": base[i:] for i in range(300)}, path)  # 300 MiB of copies
  message = _load_in_small_memory(path)
  assert "refused before allocating" in message and "max_bytes" in message, message
  # A caller who trusts the file can raise the bound.
  loaded = load_state_dict(path, max_bytes=400 << 20)
  assert len(loaded) == 300 and loaded["v299"][0] == 299


def test_legitimate_repeating_views_still_load(tmp_path):
  sd = {"unfolded": torch.arange(10.0).unfold(0, 3, 1),    # overlapping strides (1, 1)
        "expanded": torch.tensor([[1.0], [2.0]]).expand(2, 1000),
        "size_one_huge_stride": torch.zeros(4).as_strided((1, 4), (1 << 40, 1))}
  path = tmp_path / "views.pth"
  torch.save(sd, path)
  _assert_same(load_state_dict(path), sd)


@pytest.mark.parametrize("offset, size, stride, match", [
    (0, (4, 4), (-1, 1), "non-negative"),
    (0, (0, 1 << 50), (1, 1), "not a real tensor"),
    (0, (2,) * 40, (0,) * 40, "not a real tensor"),
    (3, (2,), (1,), "reaches element 4 of a storage with 4 elements"),
    (0, (2, 3), (3, 1), "reaches element 5 of a storage with 4 elements"),
    (0, (1 << 31, 2), (1, 1 << 62), "reaches element"),
])
def test_sizes_and_strides_that_do_not_fit_the_storage(tmp_path, offset, size, stride, match):
  path = _crafted_pth(tmp_path / "bad.pth", {"w": ("0", offset, size, stride)},
                      {"0": [1.0, 2.0, 3.0, 4.0]})
  with pytest.raises(errors.CheckpointError, match=match):
    load_state_dict(path)


def test_record_size_is_checked_before_reading(tmp_path):
  """A record whose zip entry is not the size the pickle declares is not read."""
  path = _crafted_pth(tmp_path / "short.pth", {"w": ("0", 0, (3,), (1,))}, {"0": [1.0] * 3},
                      numels={"0": 4})
  with pytest.raises(errors.CheckpointError, match="holds 12 bytes, the pickle expects 16"):
    load_state_dict(path)


def test_deflated_record_cannot_inflate_past_the_bound(tmp_path):
  """256 MiB of zeros deflate to 256 KB: counted at their declared size, not read."""
  path = _crafted_pth(tmp_path / "inflate.pth", {"w": ("0", 0, (1,), (1,))},
                      {"0": 64 << 20})
  assert path.stat().st_size < 1 << 20
  message = _load_in_small_memory(path, headroom=128 << 20)
  assert "refused before allocating" in message and "storage archive/data/0" in message, message


def test_crafting_helper_writes_what_the_reader_accepts(tmp_path):
  path = _crafted_pth(tmp_path / "ok.pth",
                      {"w": ("0", 1, (2, 2), (1, 2)), "v": ("0", 0, (3,), (0,))},
                      {"0": [1.0, 2.0, 3.0, 4.0, 5.0]})
  got = load_state_dict(path)
  np.testing.assert_array_equal(got["w"], [[2.0, 4.0], [3.0, 5.0]])
  np.testing.assert_array_equal(got["v"], [1.0, 1.0, 1.0])
