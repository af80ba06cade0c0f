"""Bad input: an error naming the file and the problem, or a logged, counted skip."""
import logging

import numpy as np
from PIL import Image
import pytest

from sampot_jax import data
from sampot_jax import errors
from sampot_jax.data import fake_data
from sampot_jax.runtime import settings


def _subject_files(root, sid):
  return {"image": root / "images" / f"{sid}.png",
          "left": root / "masks" / "left" / f"{sid}.png",
          "right": root / "masks" / "right" / f"{sid}.png"}


def _wrong_size(files):
  mask = np.array(Image.open(files["left"]))
  fake_data.write_image(files["left"], np.array(Image.fromarray(mask).resize((40, 40))))
  return files["left"], "but its image is"


def _empty(files):
  fake_data.write_image(files["left"], np.zeros((80, 64), np.uint8))
  return files["left"], "mask is empty"


def _gray_values(files):
  mask = np.array(Image.open(files["left"]))
  mask[mask > 0] = 128
  fake_data.write_image(files["left"], mask)
  return files["left"], "besides 0/1/255"


def _missing(files):
  files["right"].unlink()
  return files["right"], "mask file does not exist"


def _unreadable(files):
  files["image"].write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
  return files["image"], "cannot be decoded"


def _absent_id(files):
  split_file = files["image"].parents[1] / "splits.csv"
  with open(split_file, "a") as f:
    f.write("MCUCXR_9999_0,train,normal\n")
  return split_file, "'MCUCXR_9999_0'"


CASES = {"wrong_size": _wrong_size, "empty": _empty, "gray_values": _gray_values,
         "missing_mask": _missing, "unreadable_image": _unreadable, "absent_id": _absent_id}


def _setup(tmp_path, case, source):
  ids = fake_data.write("montgomery_team", tmp_path / "raw", n=6)
  bad_file, problem = CASES[case](_subject_files(tmp_path / "raw", ids[0]))  # ids[0]: train
  config = settings.block(settings.Data())
  config.source, config.dir, config.image_size = source, str(tmp_path / "raw"), 32
  config.tfds_dir = str(tmp_path / "tfds")
  return config, bad_file, problem


@pytest.mark.parametrize("source", ["folder", "montgomery_team"])
@pytest.mark.parametrize("case", list(CASES))
def test_error_names_file_and_problem(tmp_path, case, source):
  config, bad_file, problem = _setup(tmp_path, case, source)
  with pytest.raises(errors.BadInputError) as info:
    data.load_split(config, "train")
  assert str(bad_file) in str(info.value) and problem in str(info.value)
  assert info.value.file == str(bad_file)


@pytest.mark.parametrize("source", ["folder", "montgomery_team"])
@pytest.mark.parametrize("case", list(CASES))
def test_skip_logs_each_and_counts(tmp_path, caplog, case, source):
  config, bad_file, problem = _setup(tmp_path, case, source)
  config.on_bad_example = "skip"
  with caplog.at_level(logging.WARNING):
    ls = data.load_split(config, "train")
  # 2 train subjects in the fake split; a missing id removes none of them.
  assert len(ls) == (2 if case == "absent_id" else 1)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  skips = [w for w in warnings if "Skipping bad example" in w]
  assert len(skips) == 1 and str(bad_file) in skips[0] and problem in skips[0]
  assert any("1 bad example(s) skipped" in w for w in warnings)
  # The other splits are untouched.
  assert len(data.load_split(config, "val")) == 2


def test_data_prepared_with_skips_refuses_error_policy(tmp_path):
  config, bad_file, _ = _setup(tmp_path, "empty", "montgomery_team")
  config.on_bad_example = "skip"
  data.load_split(config, "train")
  config.on_bad_example = "error"
  with pytest.raises(errors.BadInputError, match="prepared with on_bad_example='skip'") as info:
    data.load_split(config, "train")
  assert str(bad_file) in str(info.value)


def test_config_errors_name_the_field(tmp_path):
  config, _, _ = _setup(tmp_path, "empty", "folder")
  with pytest.raises(ValueError, match="split='training'"):
    data.load_split(config, "training")
  for field, value in (("source", "kaggle"), ("target", "../heart"), ("on_bad_example", "warn")):
    bad = config.copy_and_resolve_references()
    bad[field] = value
    with pytest.raises(ValueError, match=f"config.data.{field}="):
      data.load_split(bad, "train")
  bad = config.copy_and_resolve_references()
  bad.dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.load_split(bad, "train")


def test_team_layout_without_split_file(tmp_path):
  config, _, _ = _setup(tmp_path, "empty", "montgomery_team")
  (tmp_path / "raw" / "splits.csv").unlink()
  with pytest.raises(FileNotFoundError, match="splits.csv"):
    data.load_split(config, "val")


def test_lungs_on_the_wrong_side(tmp_path):
  config, _, _ = _setup(tmp_path, "empty", "folder")
  files = _subject_files(tmp_path / "raw", "MCUCXR_0002_1")  # a val subject
  left, right = files["left"].read_bytes(), files["right"].read_bytes()
  files["left"].write_bytes(right)
  files["right"].write_bytes(left)
  with pytest.raises(errors.BadInputError, match="standard view") as info:
    data.load_split(config, "val")
  assert str(files["left"]) in str(info.value)


def test_jsrt_truncated_image_and_full_size_mask(tmp_path):
  from sampot_jax.data import sources  # pylint: disable=g-import-not-at-top
  (sid,) = fake_data.write("jsrt_scr", tmp_path, n=1)
  subject = sources.scan("jsrt_scr", tmp_path).subjects[sid]
  example = sources.read_subject(subject)
  assert example["image"].shape == (2048, 2048) and example["left"].shape == (1024, 1024)
  # An SCR mask at the JSRT image's own size is not the SCR layout.
  fake_data.write_image(subject.left, np.zeros((2048, 2048), np.uint8))
  with pytest.raises(errors.BadInputError, match="expected a 1024x1024 mask") as info:
    sources.read_subject(subject)
  assert info.value.file == str(subject.left)
  subject.image.write_bytes(subject.image.read_bytes()[:1000])
  with pytest.raises(errors.BadInputError, match="has 1000 bytes; expected 8388608"):
    sources.read_subject(subject)
