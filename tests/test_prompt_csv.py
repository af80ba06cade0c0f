"""data.prompt_csv, the one prompt-CSV reader, on files as people save them: Excel's BOM,
UTF-16, blank lines, comments, other encodings, broken quoting, huge fields, both keys (file for
refine, id for evaluate), and a run that evaluates only the first images of a split."""
import numpy as np
import pytest

from sampot_jax import errors
from sampot_jax.data import prompt_csv

IDS = ["a", "b", "c"]
SHAPE = (10, 10)


def write(path, data: bytes):
  path.write_bytes(data)
  return path


def test_utf8_bom_from_excel_is_read(tmp_path):
  path = write(tmp_path / "clicks.csv", b"\xef\xbb\xbfid,x,y\r\na,1,2\r\nb,3,4\r\nc,5,6\r\n")
  np.testing.assert_array_equal(prompt_csv.prompts_for_ids(path, IDS, SHAPE),
                                [[1, 2], [3, 4], [5, 6]])


def test_line_numbers_count_blank_lines(tmp_path):
  path = write(tmp_path / "clicks.csv", b"id,x,y\n\na,1,1\n\n\nb,one,1\nc,1,1\n")
  with pytest.raises(ValueError, match=r"line 6: x='one'"):
    prompt_csv.prompts_for_ids(path, IDS, SHAPE)
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\n\nb,1,1\n\na,2,2\nc,1,1\n")
  with pytest.raises(ValueError, match=r"line 6: image id 'a' already has a prompt on line 2"):
    prompt_csv.prompts_for_ids(path, IDS, SHAPE)


def test_non_utf8_byte_names_line_and_byte(tmp_path):
  # 'b\xe9' is Latin-1 (Excel's 'CSV' on Windows) for 'bé'.
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\nb\xe9,1,1\nc,1,1\n")
  with pytest.raises(ValueError) as e:
    prompt_csv.prompts_for_ids(path, IDS, SHAPE)
  message = str(e.value)
  assert str(path) in message and "line 3, byte 2" in message, message
  assert "save the file as UTF-8" in message


def test_utf16_from_excel_is_read(tmp_path):
  path = write(tmp_path / "clicks.csv", "id,x,y\na,1,1\nb,2,2\nc,3,3\n".encode("utf-16"))
  np.testing.assert_array_equal(prompt_csv.prompts_for_ids(path, IDS, SHAPE),
                                [[1, 1], [2, 2], [3, 3]])
  broken = "id,x,y\na,1,1\n".encode("utf-16") + b"\x00\xd8"  # a lone surrogate
  path = write(tmp_path / "broken.csv", broken)
  with pytest.raises(errors.BadInputError, match="not UTF-16.*save the file as UTF-8"):
    prompt_csv.prompts_for_ids(path, IDS, SHAPE)


def test_rows_beyond_the_evaluated_images_are_explained(tmp_path):
  """max_images=2 with a clicks file for the whole split: 'c' is in the split, only
  not evaluated; the message must not say it is not in the split."""
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\nb,2,2\nc,3,3\n")
  with pytest.raises(ValueError) as e:
    prompt_csv.prompts_for_ids(path, IDS[:2], SHAPE)
  message = str(e.value)
  assert "line 4: image id 'c' is not in the evaluated set of 2 images" in message, message
  assert "config.max_images" in message and "not in the evaluated split" not in message
  # Told the whole split, the reader skips rows of images it does not evaluate...
  np.testing.assert_array_equal(prompt_csv.prompts_for_ids(path, IDS[:2], SHAPE, split_ids=IDS),
                                [[1, 1], [2, 2]])
  # ... and still refuses ids from nowhere, saying so.
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\nb,2,2\nzz,3,3\n")
  with pytest.raises(ValueError, match=r"line 4: image id 'zz' is not in the split \(3 images"):
    prompt_csv.prompts_for_ids(path, IDS[:2], SHAPE, split_ids=IDS)


def test_missing_rows_count_the_evaluated_images(tmp_path):
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,1,1\n")
  with pytest.raises(ValueError,
                     match=r"no prompt for 2 image\(s\), e.g. \['b', 'c'\]; .*\(3 images\)"):
    prompt_csv.prompts_for_ids(path, IDS, SHAPE)


def test_every_bad_row_is_reported_at_once(tmp_path):
  path = write(tmp_path / "clicks.csv", b"id,x,y\na,one,1\nb,1\nzz,1,1\n")
  with pytest.raises(errors.BadInputsError) as e:
    prompt_csv.prompts_for_ids(path, IDS, SHAPE)
  lines = sorted(p.reason.split(":")[0] for p in e.value.problems if p.reason.startswith("line"))
  assert lines == ["line 2", "line 3", "line 4"], [str(p) for p in e.value.problems]


def test_a_prompts_file_with_boxes(tmp_path):
  path = tmp_path / "boxes.csv"
  path.write_text("id,x0,y0,x1,y1\nb,1,2,6,7\na,0,0,3,3\n")
  np.testing.assert_array_equal(prompt_csv.prompts_for_ids(path, ["a", "b"], (10, 10)),
                                [[0, 0, 3, 3], [1, 2, 6, 7]])
  path.write_text("id,x0,y0,x1,y1\na,5,0,3,3\n")
  with pytest.raises(ValueError, match="image 'a' .* x0 < x1"):
    prompt_csv.prompts_for_ids(path, ["a"], (10, 10))
  path.write_text("id,x0,y0\na,5,0\n")
  with pytest.raises(ValueError, match="id,x0,y0,x1,y1"):
    prompt_csv.prompts_for_ids(path, ["a"], (10, 10))


def test_prompt_header_decides_the_kind(tmp_path):
  path = tmp_path / "p.csv"
  path.write_text(" y , x ,file\n# a comment\n\n3, 4 ,a.png\n")
  dim, rows, bad = prompt_csv.read_prompts(path)
  assert dim == 2 and not bad
  assert rows[0].key == "a.png" and rows[0].line == 4 and rows[0].prompt.tolist() == [4.0, 3.0]
  path.write_text("file,x0,y0,x1,y1,x,y\na.png,1,2,3,4,2,3\n")
  assert prompt_csv.read_prompts(path)[0] == 6
  path.write_text("file,x0,y0,x1\na.png,1,2,3\n")
  with pytest.raises(ValueError, match=r"line 1: the header is file,x0,y0,x1"):
    prompt_csv.read_prompts(path)


def test_both_keys_follow_the_same_rules(tmp_path):
  """Comments, blank lines, BOM and line numbers read the same keyed by file or by id."""
  body = "\ufeff# made by hand\n{key},x,y\n\n# the first image\na.png,1,2\nb.png,x,3\n"
  for key in ("file", "id"):
    path = write(tmp_path / f"{key}.csv", body.format(key=key).encode("utf-8"))
    dim, rows, bad = prompt_csv.read_prompts(path, key=key)
    assert dim == 2 and [(r.key, r.line) for r in rows] == [("a.png", 5)]
    assert [(b.file, b.line) for b in bad] == [("b.png", 6)], [str(b) for b in bad]


def test_latin1_names_file_line_and_fix_for_refine_too(tmp_path):
  path = write(tmp_path / "p.csv", b"file,x,y\na.png,1,1\nb\xe9.png,1,1\n")
  with pytest.raises(errors.BadInputError) as e:
    prompt_csv.read_prompts(path)
  assert str(path) in str(e.value) and "line 3, byte 2" in str(e.value)
  assert "save the file as UTF-8" in str(e.value)


@pytest.mark.parametrize("data, where", [
    (b"file,x,y\na.png,1,1\n\"b.png,1,1\n" + b"c.png,1,1\n" * 20000, "line 3"),  # never closed
    (b"file,x,y\na.png,1,1\nb.png," + b"9" * 200000 + b",1\n", "line 3"),  # a huge field
])
def test_broken_quoting_and_huge_fields_name_the_line(tmp_path, data, where):
  path = write(tmp_path / "p.csv", data)
  limit = prompt_csv.csv.field_size_limit()
  with pytest.raises(errors.BadInputError, match=rf"{where}: .*field"):
    prompt_csv.read_prompts(path)
  assert prompt_csv.csv.field_size_limit() == limit  # the process-wide limit is restored
