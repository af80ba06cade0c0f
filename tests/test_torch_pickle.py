"""ports.torch_pickle against files written by the real torch.save."""
import builtins
import collections
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # Only the reference writer.

from ports.torch_pickle import CheckpointError, load_state_dict  # noqa: E402

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
  with pytest.raises(CheckpointError, match="no such file") as e:
    load_state_dict(tmp_path / "absent.pth")
  assert "absent.pth" in str(e.value)


def test_non_zip_file(tmp_path):
  path = tmp_path / "notes.pth"
  path.write_text("these are not weights\n")
  with pytest.raises(CheckpointError, match="not a zip archive") as e:
    load_state_dict(path)
  assert str(path) in str(e.value)


def test_bare_pickle_is_not_read(tmp_path):
  path = tmp_path / "bare.pth"
  path.write_bytes(pickle.dumps({"w": [1.0]}))
  with pytest.raises(CheckpointError, match="bare pickle"):
    load_state_dict(path)


def test_legacy_format_says_resave(tmp_path):
  path = tmp_path / "legacy.pth"
  torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
  with pytest.raises(CheckpointError, match="legacy.*Re-save"):
    load_state_dict(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_file(saved, tmp_path, fraction):
  path, _ = saved
  data = path.read_bytes()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(data[:int(len(data) * fraction)])
  with pytest.raises(CheckpointError, match="truncated or damaged") as e:
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
  with pytest.raises(CheckpointError, match="damaged"):
    load_state_dict(bad)


def test_missing_storage_record(saved, tmp_path):
  path, _ = saved
  partial = tmp_path / "partial.pth"
  with zipfile.ZipFile(path) as src, zipfile.ZipFile(partial, "w") as dst:
    for info in src.infolist():
      if not info.filename.endswith("/data/3"):
        dst.writestr(info, src.read(info))
  with pytest.raises(CheckpointError, match="data/3 is missing"):
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

  with pytest.raises(CheckpointError) as e:
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
  with pytest.raises(CheckpointError, match=f"'{refused}'.*NOT executed"):
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
  with pytest.raises(CheckpointError, match=r"\['step'\].*flat state_dict"):
    load_state_dict(path)


def test_reader_does_not_import_torch(saved):
  path, sd = saved
  code = ("import sys; from ports.torch_pickle import load_state_dict; "
          "d = load_state_dict(sys.argv[1]); "
          "assert 'torch' not in sys.modules, 'torch was imported'; "
          "print(len(d))")
  out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO,
                       check=True, capture_output=True, text=True)
  assert out.stdout.strip() == str(len(sd))
