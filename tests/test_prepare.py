"""data.prepare: the NLM's Montgomery zip (here a small synthetic one of the same structure) ->
the montgomery_team layout, checked by hashes; and a missing data folder says how to get it."""
import csv
import hashlib
import io
import json
import zipfile

import numpy as np
from PIL import Image
import pytest

from sampot_jax import errors
from sampot_jax.data import prepare
from sampot_jax.data import sources
from sampot_jax.data import splits
from tests.helpers import run_main

IDS = {"MCUCXR_0001_0": "train", "MCUCXR_0002_0": "val", "MCUCXR_0003_1": "test"}


def _png(array) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def synthetic_zip(path, swap=(), drop=()):
  """NLM-like zip: 16-bit 60x48 images (12 bits used), 0/1 masks; the patient's left lung at
  larger x (leftMask), unless its id is in `swap` (folders exchanged)."""
  rng = np.random.default_rng(0)
  with zipfile.ZipFile(path, "w") as z:
    for sid in IDS:
      image = (rng.random((60, 48)) * 4095).astype(np.uint16)
      left, right = np.zeros((60, 48), np.uint8), np.zeros((60, 48), np.uint8)
      left[10:50, 28:44] = 1
      right[10:50, 4:20] = 1
      if sid in swap:
        left, right = right, left
      for folder, array in (("CXR_png", image), ("ManualMask/leftMask", left),
                            ("ManualMask/rightMask", right)):
        if (folder, sid) not in drop:
          z.writestr(f"MontgomerySet/{folder}/{sid}.png", _png(array))
    z.writestr("MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt", "Sex: F\n")
  return path


@pytest.fixture
def split_file(tmp_path):
  path = tmp_path / "split.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "split", "finding"])
    writer.writerows([sid, split, "normal"] for sid, split in IDS.items())
  return path


def test_the_zip_becomes_the_team_layout_checked_by_hashes(tmp_path, split_file):
  archive = synthetic_zip(tmp_path / "nlm.zip", swap=("MCUCXR_0002_0",))
  digest = hashlib.sha256(archive.read_bytes()).hexdigest()
  out = tmp_path / "montgomery"
  manifest = prepare.prepare_montgomery(archive, out, 32, digest, split_file)
  assert manifest["source"]["sha256"] == digest and manifest["subjects"] == 3
  assert manifest["masks_swapped"] == ["MCUCXR_0002_0"]
  scan = sources.scan("montgomery_team", out)  # the layout the project reads
  assert sorted(scan.subjects) == sorted(IDS) and scan.splits == IDS
  for sid in IDS:
    image = np.asarray(Image.open(out / "images" / f"{sid}.png"))
    assert image.shape == (32, 32) and image.dtype == np.uint8 and image.max() > 200
    left = np.asarray(Image.open(out / "masks" / "left" / f"{sid}.png"))
    right = np.asarray(Image.open(out / "masks" / "right" / f"{sid}.png"))
    assert set(np.unique(left)) == {0, 255}
    assert np.nonzero(left)[1].mean() > np.nonzero(right)[1].mean()  # patient's left: image right
  listed = json.loads((out / prepare.MANIFEST).read_text())["files"]
  assert len(listed) == 3 * 3 + 2
  assert not list(tmp_path.glob(".montgomery*"))  # the temporary folder was renamed
  # A second run verifies; a changed file is named, with the fix.
  assert prepare.prepare_montgomery(archive, out, 32, digest, split_file) == manifest
  (out / "masks" / "left" / "MCUCXR_0003_1.png").write_bytes(_png(np.zeros((32, 32), np.uint8)))
  with pytest.raises(errors.BadInputError,
                     match=r"1 prepared file\(s\) are missing or changed \(e.g. "
                           r"masks/left/MCUCXR_0003_1.png\); delete"):
    prepare.prepare_montgomery(archive, out, 32, digest, split_file)


def test_a_wrong_or_incomplete_zip_is_refused_and_leaves_nothing(tmp_path, split_file):
  archive = synthetic_zip(tmp_path / "nlm.zip", drop=(("ManualMask/rightMask", "MCUCXR_0003_1"),))
  out = tmp_path / "montgomery"
  with pytest.raises(errors.BadInputError, match=r"nlm.zip: has sha256 [0-9a-f]{64}, not the NLM "
                     r"release's 54601e95.*--config.zip_sha256=''"):
    prepare.prepare_montgomery(archive, out, 32, prepare.ZIP_SHA256, split_file)
  with pytest.raises(errors.BadInputError, match=r"lacks 1 file\(s\).*right of MCUCXR_0003_1"):
    prepare.prepare_montgomery(archive, out, 32, "", split_file)
  assert not out.exists() and not list(tmp_path.glob(".montgomery*"))
  data = bytearray(synthetic_zip(tmp_path / "bad.zip").read_bytes())
  start = data.index(b"IDAT") + 8  # inside the first PNG's compressed pixels: its CRC fails
  data[start:start + 4] = b"\0\0\0\0"
  (tmp_path / "bad.zip").write_bytes(bytes(data))
  with pytest.raises(errors.BadInputError, match=r"bad.zip: member MontgomerySet/CXR_png/"
                     r"MCUCXR_0001_0.png is damaged.*download the zip again"):
    prepare.prepare_montgomery(tmp_path / "bad.zip", out, 32, "", split_file)


def test_the_shipped_split_is_the_fixed_one():
  table = {sid: split for sid, (split, _) in splits.read_splits_csv(prepare.SPLITS).items()}
  assert len(table) == 138
  assert sorted(list(table.values()).count(s) for s in ("train", "val", "test")) == [31, 46, 61]


def test_a_missing_montgomery_folder_names_the_download_and_the_command(tmp_path):
  log = run_main("--config", "configs/lite_medsam_evaluate_tiny.py",
                 f"--config.data.dir={tmp_path / 'nowhere'}", "--workdir", tmp_path / "run")
  assert log.returncode == 1, log.stdout + log.stderr
  assert prepare.DOWNLOAD_PAGE in log.stderr and "configs/prepare_montgomery.py" in log.stderr
  assert "Traceback" not in log.stderr


def test_prepare_from_the_command_line(tmp_path):
  archive = synthetic_zip(tmp_path / "nlm.zip")
  log = run_main("--config", "configs/prepare_montgomery.py", f"--config.zip={archive}",
                 "--config.zip_sha256=", "--config.image_size=32", "--workdir", tmp_path / "m")
  # The shipped split names 138 subjects; this zip holds 2 of them (MCUCXR_0003_1 is not one).
  assert log.returncode == 1 and "lacks 408 file(s)" in log.stderr, log.stderr
