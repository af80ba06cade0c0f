"""baselines.read_clicks on files as people save them: Excel's BOM, blank lines,
other encodings, and a run that evaluates only the first images of a split."""
import numpy as np
import pytest

from sampot_jax.sampot import baselines

IDS = ["a", "b", "c"]
SHAPE = (10, 10)


def write(path, data: bytes):
  path.write_bytes(data)
  return path


def test_utf8_bom_from_excel_is_read(tmp_path):
  path = write(tmp_path / "clicks.csv", b"\xef\xbb\xbfid,x,y\r\na,1,2\r\nb,3,4\r\nc,5,6\r\n")
  np.testing.assert_array_equal(baselines.read_clicks(path, IDS, SHAPE),
                                [[1, 2], [3, 4], [5, 6]])


def test_line_numbers_count_blank_lines(tmp_path):
  path = write(tmp_path / "clicks.csv", b"id,x,y\n\na,1,1\n\n\nb,one,1\nc,1,1\n")
  with pytest.raises(ValueError, match=r"line 6: x='one'"):
    baselines.read_clicks(path, IDS, SHAPE)
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\n\nb,1,1\n\na,2,2\nc,1,1\n")
  with pytest.raises(ValueError, match=r"line 6: image id 'a' already has a click on line 2"):
    baselines.read_clicks(path, IDS, SHAPE)


def test_non_utf8_byte_names_line_and_byte(tmp_path):
  # 'b\xe9' is Latin-1 (Excel's 'CSV' on Windows) for 'bé'.
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\nb\xe9,1,1\nc,1,1\n")
  with pytest.raises(ValueError) as e:
    baselines.read_clicks(path, IDS, SHAPE)
  message = str(e.value)
  assert str(path) in message and "line 3, byte 2" in message, message
  assert "save the file as UTF-8" in message


def test_utf16_is_named(tmp_path):
  path = write(tmp_path / "clicks.csv", "id,x,y\na,1,1\n".encode("utf-16"))
  with pytest.raises(ValueError, match="UTF-16.*save it as UTF-8"):
    baselines.read_clicks(path, IDS, SHAPE)


def test_rows_beyond_the_evaluated_images_are_explained(tmp_path):
  """max_images=2 with a clicks file for the whole split: 'c' is in the split, only
  not evaluated; the message must not say it is not in the split."""
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\nb,2,2\nc,3,3\n")
  with pytest.raises(ValueError) as e:
    baselines.read_clicks(path, IDS[:2], SHAPE)
  message = str(e.value)
  assert "line 4: image id 'c' is not in the evaluated set of 2 images" in message, message
  assert "config.max_images" in message and "not in the evaluated split" not in message
  # Told the whole split, the reader skips rows of images it does not evaluate...
  np.testing.assert_array_equal(baselines.read_clicks(path, IDS[:2], SHAPE, split_ids=IDS),
                                [[1, 1], [2, 2]])
  # ... and still refuses ids from nowhere, saying so.
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\nb,2,2\nzz,3,3\n")
  with pytest.raises(ValueError, match=r"line 4: image id 'zz' is not in the split \(3 images"):
    baselines.read_clicks(path, IDS[:2], SHAPE, split_ids=IDS)


def test_missing_rows_count_the_evaluated_images(tmp_path):
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\n")
  with pytest.raises(ValueError,
                     match=r"no click for 2 image\(s\), e.g. \['b', 'c'\]; .*\(3 images\)"):
    baselines.read_clicks(path, IDS, SHAPE)
