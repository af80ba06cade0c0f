"""The score task: the regressor's predicted Dice of existing masks (a tiny random regressor)."""
import numpy as np
from PIL import Image
import pytest

from sampot_jax import errors
from sampot_jax.data import images as images_lib
from sampot_jax.regressor import store
from sampot_jax.tasks import score
from tests import helpers
from tests.helpers import read_rows


@pytest.fixture
def user_folder(tmp_path):
  return helpers.user_folder(tmp_path)


def test_score_task_scores_masks_matched_by_name(user_folder, tmp_path):
  from configs import score_tiny  # pylint: disable=g-import-not-at-top
  masks = tmp_path / "masks"
  masks.mkdir()
  (masks / "sub").mkdir()
  for name, (h, w) in (("a.png", (40, 40)), ("sub/b.png", (30, 50)), ("c.png", (36, 24))):
    m = np.zeros((h, w), np.uint8)
    m[5:20, 4:18] = 255
    Image.fromarray(m).save(masks / name)
  config = score_tiny.get_config()
  config.images, config.masks = str(user_folder), str(masks)
  summary = score.run(config, tmp_path / "out")
  rows = {r["file"]: r for r in read_rows(tmp_path / "out" / "scores.csv")}
  assert sorted(rows) == ["a.png", "c.dcm", "sub/b.png"] and summary["scored"] == 3
  assert rows["c.dcm"]["mask"] == "c.png"  # matched by name, suffix ignored
  # The score is the regressor's on the padded, resized image and mask.
  scorer = store.from_config(config.regressor)
  image = images_lib.read_image(user_folder / "sub" / "b.png")
  mask = images_lib.read_mask(masks / "sub" / "b.png")
  direct = scorer(images_lib.to_square(image.gray, 32)[None],
                    images_lib.to_square(mask.astype(np.float32), 32)[None])
  assert float(rows["sub/b.png"]["score"]) == pytest.approx(float(direct[0]), abs=1e-5)
  for row in rows.values():
    assert 0.0 <= float(row["score"]) <= 1.0
  # A mask without an image, an image without a mask, a size mismatch.
  Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "stray.png")
  (masks / "c.png").unlink()
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "a.png")
  with pytest.raises(errors.BadInputsError) as info:
    score.run(config, tmp_path / "out2")
  assert "stray.png (masks line" not in str(info.value)
  assert "stray.png: a mask without an image" in str(info.value)
  assert "c.dcm: no mask named c.*" in str(info.value)
  config.on_bad_example = "skip"
  summary = score.run(config, tmp_path / "out3")
  assert summary["scored"] == 1 and summary["skipped"] == 3
  assert any("the mask is 10x10" in b["reason"] for b in summary["bad_inputs"])


def test_masks_in_the_images_folder_or_workdir_are_refused(user_folder, tmp_path):
  from configs import score_tiny  # pylint: disable=g-import-not-at-top
  config = score_tiny.get_config()
  config.images, config.masks = str(user_folder), str(user_folder)
  with pytest.raises(errors.ConfigError, match="config.masks and config.images are the same"):
    score.run(config, tmp_path / "out")
  config.masks = str(tmp_path / "masks")
  with pytest.raises(errors.ConfigError, match="holds config.images"):
    score.run(config, user_folder)


def test_label_maps_need_their_label_and_a_rerun_scoring_nothing_leaves_no_old_rows(
    user_folder, tmp_path):
  from configs import score_tiny  # pylint: disable=g-import-not-at-top
  masks = tmp_path / "masks"
  masks.mkdir()
  labels = np.zeros((40, 40), np.uint8)
  labels[5:20, 4:18], labels[22:35, 4:30] = 1, 2
  Image.fromarray(labels).save(masks / "a.png")
  config = score_tiny.get_config()
  config.images, config.masks = str(user_folder / "a.png"), str(masks)
  with pytest.raises(errors.BadInputsError, match=r"a.png: .*label map \(values 0, 1, 2"):
    score.run(config, tmp_path / "out")
  config.label = 2
  summary = score.run(config, tmp_path / "out")
  rows = read_rows(tmp_path / "out" / "scores.csv")
  assert summary["scored"] == 1 and rows[0]["mask_pixels"] == str(int((labels == 2).sum()))
  # The same workdir, every mask now bad and skipped: scores.csv holds no row of the old run.
  config.label = 7
  config.on_bad_example = "skip"
  summary = score.run(config, tmp_path / "out")
  assert summary["scored"] == 0 and read_rows(tmp_path / "out" / "scores.csv") == []
  header = (tmp_path / "out" / "scores.csv").read_text().splitlines()[0]
  assert header == ",".join(score.SCORE_COLUMNS)
