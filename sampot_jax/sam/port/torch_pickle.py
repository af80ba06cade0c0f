"""Reads a PyTorch `.pth` state_dict without importing torch.

`torch.save` (torch >= 1.6) writes a zip archive:

  <prefix>/data.pkl       pickle of the object; tensors refer to storages by key
  <prefix>/data/<key>     raw bytes of each storage
  <prefix>/byteorder      "little" or "big" (absent in old files: little)
  <prefix>/version, ...   format bookkeeping, not needed here

The pickle is read by a restricted unpickler: `find_class` admits only the
globals that rebuild tensors (see `_admitted_globals`), each mapped to a numpy
stand-in defined here; any other global is refused before anything is called,
so a crafted checkpoint cannot run code.

bfloat16 and float8 tensors come back as the exact `ml_dtypes` types (shipped
with jax), not widened to float32, so the bits are kept as stored.

Memory is bounded by the file, not by what the pickle declares. Before anything
is allocated, each tensor's size/stride/offset is checked against the bytes its
storage really holds (no element outside it, no negative or absurd entries), and
every allocation (storage records, tensor copies) is charged to a budget of
4 x the file size + 64 MiB (`max_bytes`). A plain state_dict needs about 2 x
(the storages, then the copies); views that repeat storage elements (expand()'s
stride 0, as_strided overlaps) are the only way to need more, and a crafted file
that declares a 16 GiB expansion of one element is refused, not allocated.
"""
import collections
import math
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

from sampot_jax import errors

__all__ = ["load_state_dict"]


# torch.<Name>Storage (typed, torch <= 2.x writes these for the classic dtypes)
# -> element dtype. Quantized storages are left out: their values need scales.
_TYPED_STORAGES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
}

# torch.<dtype> objects that appear beside an UntypedStorage
# (`_rebuild_tensor_v3`, used for dtypes that have no typed storage class).
_V3_DTYPES = {
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
}

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

# Default budget: every byte the reader allocates, per file (see the docstring).
_BUDGET_FILE_FACTOR = 4
_BUDGET_ALLOWANCE = 64 << 20
_MAX_DIM = 1 << 40  # No real tensor dimension comes near; numpy fails beyond ~2**62.
_MAX_NDIM = 32      # numpy's limit is 64.


def _human(n):
  for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
    if n < 1024 or unit == "PiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024


class _StorageType:
  """Stand-in for a torch storage class; `dtype` is None for UntypedStorage."""
  __slots__ = ("name", "dtype")

  def __init__(self, name, dtype):
    self.name = name
    self.dtype = None if dtype is None else np.dtype(dtype)


class _Dtype:
  """Stand-in for a torch.dtype object."""
  __slots__ = ("name", "dtype")

  def __init__(self, name, dtype):
    self.name = name
    self.dtype = np.dtype(dtype)


class _Storage:
  """A storage read from the archive: `raw` bytes, typed by `dtype` or not."""
  __slots__ = ("key", "raw", "dtype")

  def __init__(self, key, raw, dtype):
    self.key = key
    self.raw = raw
    self.dtype = dtype


class _Rebuild:
  """Stand-in for one torch._utils rebuild function; calls `fn(*args)`."""
  __slots__ = ("name", "fn")

  def __init__(self, name, fn):
    self.name = name
    self.fn = fn

  def __call__(self, *args):
    return self.fn(*args)


def _admitted_globals(reader):
  """(module, name) -> stand-in. Built fresh for every file, so whatever a
  pickle does to these objects (BUILD can set attributes) dies with its load."""
  admitted = {
      # The state_dict container; a plain mapping, constructing it runs nothing.
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"):
          _Rebuild("_rebuild_tensor_v2", reader.rebuild_tensor_v2),
      ("torch._utils", "_rebuild_tensor_v3"):
          _Rebuild("_rebuild_tensor_v3", reader.rebuild_tensor_v3),
      ("torch._utils", "_rebuild_parameter"):
          _Rebuild("_rebuild_parameter", _rebuild_parameter),
      # torch >= 2.1 pickles UntypedStorage under its defining module.
      ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", None),
      ("torch", "UntypedStorage"): _StorageType("UntypedStorage", None),
  }
  for name, dtype in _TYPED_STORAGES.items():
    admitted[("torch", name)] = _StorageType(name, dtype)
    # torch < 1.13 named storages of CUDA tensors torch.cuda.<Name>Storage; the
    # bytes on disk are the same.
    admitted[("torch.cuda", name)] = _StorageType(name, dtype)
  for name, dtype in _V3_DTYPES.items():
    admitted[("torch", name)] = _Dtype(name, dtype)
  return admitted


def _rebuild_parameter(data, requires_grad, backward_hooks):
  del requires_grad, backward_hooks  # Autograd state; meaningless for arrays.
  if not isinstance(data, np.ndarray):
    raise errors.CheckpointError(
        f"_rebuild_parameter expects a tensor, got {type(data).__name__}")
  return data


def _decode(raw, dtype, big_endian):
  """bytes -> 1-D array of `dtype` in native byte order."""
  if len(raw) % dtype.itemsize:
    raise errors.CheckpointError(
        f"a storage of {len(raw)} bytes is not a whole number of "
        f"{dtype} elements ({dtype.itemsize} bytes)")
  if not big_endian or dtype.itemsize == 1:
    return np.frombuffer(raw, dtype)
  if dtype.kind == "c":  # Each of the two float components is swapped alone.
    part = np.dtype(f"f{dtype.itemsize // 2}")
    floats = np.frombuffer(raw, part.newbyteorder(">")).astype(part)
    return floats.view(dtype)
  if dtype.kind in "biuf" and dtype.type.__module__ == "numpy":
    return np.frombuffer(raw, dtype.newbyteorder(">")).astype(dtype)
  # ml_dtypes types (bfloat16): swap as unsigned ints of the same width.
  uint = np.dtype(f"u{dtype.itemsize}")
  return np.frombuffer(raw, uint.newbyteorder(">")).astype(uint).view(dtype)


def _as_int_tuple(value, what):
  if not isinstance(value, tuple) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    raise errors.CheckpointError(f"tensor {what} must be a tuple of ints, got {value!r}")
  return value


def _repeats(size, stride):
  """How a view (Python ints, sizes > 1 only) revisits storage elements:
  '' if never, else a phrase naming the stride-0 or overlapping dimensions."""
  broadcast = [d for d, (n, s) in enumerate(zip(size, stride)) if n > 1 and s == 0]
  if broadcast:
    return f"stride 0 in dimension(s) {broadcast}, as expand() makes"
  extent = 1  # Elements spanned by the dimensions of smaller strides.
  for n, s in sorted(((n, s) for n, s in zip(size, stride) if n > 1), key=lambda d: d[1]):
    if s < extent:
      return "overlapping strides, as only as_strided() makes"
    extent = s * (n - 1) + extent
  return ""


def _strided_copy(flat, offset, size, stride, charge=None):
  """Tensor of `size` read from 1-D `flat` at element `offset` with element
  `stride`s. Every number is checked against the elements `flat` really has
  before `charge(nbytes, problem)` is asked for the copy's bytes and before
  anything is allocated (a crafted file must not read outside `flat`, nor make
  the reader allocate what its declared shape says)."""
  if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
    raise errors.CheckpointError(f"tensor storage offset must be an int >= 0, got {offset!r}")
  size = _as_int_tuple(size, "size")
  stride = _as_int_tuple(stride, "stride")
  if len(size) != len(stride) or any(s < 0 for s in size + stride):
    raise errors.CheckpointError(
        f"tensor size {size} and stride {stride} must be non-negative and of equal length")
  if len(size) > _MAX_NDIM or any(n > _MAX_DIM for n in size):
    raise errors.CheckpointError(
        f"tensor size {size[:_MAX_NDIM + 1]} is not a real tensor's (more than {_MAX_NDIM} "
        f"dimensions, or one over 2**40); the file is damaged or crafted")
  numel = math.prod(size)  # Python ints: no overflow.
  nbytes = numel * flat.itemsize
  problem = ""
  if numel:
    # A dimension of size 1 is never stepped along: its stride is moot (and may be huge).
    stride = tuple(s if n > 1 else 0 for n, s in zip(size, stride))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
      raise errors.CheckpointError(
          f"tensor (offset {offset}, size {size}, stride {stride}) reaches element "
          f"{last} of a storage with {flat.size} elements")
    problem = _repeats(size, stride)
    if problem:
      problem = (f"a view (size {size}, stride {stride}) that repeats the elements of a "
                 f"{_human(flat.nbytes)} storage ({problem}) into {_human(nbytes)}")
  if charge is not None:
    charge(nbytes, problem or f"a tensor of size {size} ({_human(nbytes)})")
  if not numel:
    return np.zeros(size, flat.dtype)
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride),
      writeable=False)
  return np.array(view, order="C", copy=True)


def _apply_metadata(array, metadata):
  """torch stores lazy negation/conjugation as tensor flags; apply them."""
  if metadata is None:
    return array
  if not isinstance(metadata, dict) or not set(metadata) <= {"conj", "neg"}:
    raise errors.CheckpointError(f"unsupported tensor metadata {metadata!r}")
  if metadata.get("neg"):
    array = -array
  if metadata.get("conj"):
    array = np.conj(array)
  return array


class _Reader(pickle.Unpickler):
  """Unpickles data.pkl of one archive; tensors become numpy arrays."""

  def __init__(self, file, archive, prefix, path, max_bytes):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._path = path
    self._big_endian = self._read_byteorder()
    self._storages = {}  # key -> _Storage; tensors may share a storage.
    self._decoded = {}  # (key, dtype) -> flat array, for UntypedStorages.
    self._admitted = _admitted_globals(self)
    self._budget = max_bytes
    self._spent = 0

  def charge(self, nbytes, what):
    """Books `nbytes` about to be allocated for `what`, or refuses the file."""
    if self._spent + nbytes > self._budget:
      raise errors.CheckpointError(
          f"{self._path}: reading it would allocate more than the {_human(self._budget)} "
          f"allowed for a {_human(os.path.getsize(self._path))} file "
          f"({_human(self._spent)} so far, then {what}); refused before allocating. "
          "A state_dict saved from a model stays well inside it; the file is crafted, or holds "
          "expanded/as_strided views or many views of one storage. If it is trusted, re-save "
          "it with torch: torch.save({k: v.contiguous().clone() for k, v in sd.items()}, "
          "'clean.pth'), or pass a larger max_bytes to load_state_dict.")
    self._spent += nbytes

  def _read_byteorder(self):
    name = f"{self._prefix}/byteorder"
    if name not in self._archive.namelist():
      return False  # Written by torch < 1.10, which only ran little-endian.
    order = self._archive.read(name).decode("ascii", "replace").strip()
    if order not in ("little", "big"):
      raise errors.CheckpointError(f"{self._path}: {name} says {order!r}, not 'little' or 'big'")
    return order == "big"

  def find_class(self, module, name):
    try:
      return self._admitted[(module, name)]
    except KeyError:
      raise errors.CheckpointError(
          f"{self._path}: the pickle references the global '{module}.{name}', "
          "which is not needed to rebuild tensors; it was refused and NOT "
          "executed. Only plain state_dicts of tensors are read; if the file is "
          "trusted, re-save it as one with torch: "
          "torch.save(dict(model.state_dict()), 'clean.pth').") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
            and isinstance(pid[4], int)):
      raise errors.CheckpointError(f"{self._path}: unexpected persistent id {pid!r}")
    _, storage_type, key, _, numel = pid  # The device `location` is moot.
    stored = self._storages.get(key)
    if stored is not None:
      if stored.dtype != storage_type.dtype:
        raise errors.CheckpointError(f"{self._path}: storage {key} is read as two dtypes")
      return stored
    record = f"{self._prefix}/data/{key}"
    try:
      info = self._archive.getinfo(record)
    except KeyError:
      raise errors.CheckpointError(
          f"{self._path}: the record {record} is missing; the file is truncated "
          "or damaged. Download or save it again.") from None
    dtype = storage_type.dtype
    if numel < 0:
      raise errors.CheckpointError(f"{self._path}: storage {key} has {numel} elements")
    # UntypedStorage's numel counts bytes; v3 types them later.
    expected = numel if dtype is None else numel * dtype.itemsize
    if info.file_size != expected:
      raise errors.CheckpointError(
          f"{self._path}: {record} holds {info.file_size} bytes, the pickle expects "
          f"{expected}; the file is damaged. Download or save it again.")
    # Counted before reading: a compressed record could inflate far beyond the file.
    self.charge(expected, f"storage {record} ({_human(expected)})")
    raw = self._archive.read(record)
    if len(raw) != expected:
      raise errors.CheckpointError(
          f"{self._path}: {record} holds {len(raw)} bytes, the pickle expects "
          f"{expected}; the file is damaged. Download or save it again.")
    if dtype is not None:
      raw = _decode(raw, dtype, self._big_endian)
    stored = self._storages[key] = _Storage(key, raw, dtype)
    return stored

  def rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad,
                        backward_hooks, metadata=None):
    del requires_grad, backward_hooks
    if not isinstance(storage, _Storage) or storage.dtype is None:
      raise errors.CheckpointError(f"{self._path}: _rebuild_tensor_v2 needs a typed storage")
    return _apply_metadata(
        _strided_copy(storage.raw, offset, size, stride, self.charge), metadata)

  def rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad,
                        backward_hooks, dtype, metadata=None):
    del requires_grad, backward_hooks
    if not isinstance(storage, _Storage) or storage.dtype is not None:
      raise errors.CheckpointError(f"{self._path}: _rebuild_tensor_v3 needs an UntypedStorage")
    if not isinstance(dtype, _Dtype):
      raise errors.CheckpointError(f"{self._path}: _rebuild_tensor_v3 needs a dtype, got {dtype!r}")
    flat = self._decoded.get((storage.key, dtype.name))
    if flat is None:
      if self._big_endian and dtype.dtype.itemsize > 1:  # Swapping copies the storage.
        self.charge(len(storage.raw), f"storage {storage.key} byte-swapped")
      flat = self._decoded[(storage.key, dtype.name)] = _decode(
          storage.raw, dtype.dtype, self._big_endian)
    return _apply_metadata(_strided_copy(flat, offset, size, stride, self.charge), metadata)


def _open_archive(path):
  """Opens `path` as a zip, or explains why it is not a readable checkpoint."""
  if not os.path.isfile(path):
    raise errors.CheckpointError(
        f"{path}: no such file. Pass the path of a PyTorch checkpoint "
        "(e.g. sam_vit_b_01ec64.pth), or fetch it with "
        "sampot_jax.storage.checkpoints.fetch_checkpoint('vit_b').")
  with open(path, "rb") as f:
    head = f.read(16)
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    if head.startswith(b"PK\x03\x04"):
      raise errors.CheckpointError(
          f"{path}: the zip archive is truncated or damaged ({e}). "
          "Download or save it again.") from None
    if head.startswith(_LEGACY_TORCH_MAGIC):
      raise errors.CheckpointError(
          f"{path}: this is the legacy (torch < 1.6) non-zip checkpoint format, "
          "which is not read here. Re-save it with a recent torch: "
          "torch.save(torch.load(OLD, weights_only=True), NEW).") from None
    if head.startswith(b"\x80"):
      raise errors.CheckpointError(
          f"{path}: a bare pickle, not a zip archive as written by torch.save; "
          "bare pickles are not read (they can run code). Save the state_dict "
          "with torch.save (torch >= 1.6).") from None
    raise errors.CheckpointError(
        f"{path}: not a PyTorch checkpoint (not a zip archive as written by "
        "torch.save). Pass a .pth saved with torch >= 1.6.") from None


def _pickle_name(archive, path):
  names = [n for n in archive.namelist()
           if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(names) != 1:
    raise errors.CheckpointError(
        f"{path}: expected one <prefix>/data.pkl in the archive, found {names}; "
        "this is not a torch.save checkpoint. Save the state_dict with torch.save.")
  return names[0]


def load_state_dict(path, *, max_bytes=None):
  """Reads a `torch.save`d state_dict.

  Args:
    path: str or os.PathLike of a `.pth` zip archive.
    max_bytes: most bytes the reader may allocate (storages and tensor copies
      together); default 4 x the file's size + 64 MiB, which a state_dict saved
      from a model stays well inside.

  Returns:
    dict: name -> np.ndarray (C-contiguous copies, dtypes as stored; bfloat16
    as ml_dtypes.bfloat16), in the order of the file.

  Raises:
    errors.CheckpointError: missing, non-zip, legacy, truncated or damaged file; a
      pickle that references anything besides tensor rebuilding; a file whose
      top level is not a flat mapping of names to tensors; sizes or strides
      that do not fit their storage; more than max_bytes to allocate.
  """
  path = os.fspath(path)
  with _open_archive(path) as archive:
    name = _pickle_name(archive, path)
    if max_bytes is None:
      max_bytes = _BUDGET_FILE_FACTOR * os.path.getsize(path) + _BUDGET_ALLOWANCE
    try:
      with archive.open(name) as f:
        reader = _Reader(f, archive, name.rsplit("/", 1)[0], path, max_bytes)
        # The pickle's own objects are bounded by its (uncompressed) size.
        reader.charge(archive.getinfo(name).file_size, f"{name} (unpickled)")
        obj = reader.load()
    except errors.CheckpointError as e:
      if str(e).startswith(path):
        raise
      raise errors.CheckpointError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
      raise errors.CheckpointError(
          f"{path}: the zip archive is truncated or damaged ({e}). "
          "Download or save it again.") from None
    except Exception as e:  # Malformed pickle: any opcode or argument error.
      raise errors.CheckpointError(
          f"{path}: data.pkl is not a readable tensor pickle "
          f"({type(e).__name__}: {e}). Download or save it again.") from None
  if not isinstance(obj, dict):
    raise errors.CheckpointError(
        f"{path}: holds a {type(obj).__name__}, not a state_dict. Save "
        "model.state_dict() with torch.save.")
  bad = [k for k, v in obj.items()
         if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise errors.CheckpointError(
        f"{path}: entries {bad[:5]} (of {len(bad)}) are not name -> tensor; "
        "a flat state_dict is expected. Save model.state_dict() with torch.save.")
  return dict(obj)
