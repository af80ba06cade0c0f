"""TFDS builder on small fake data in each raw layout (TFDS test style, no TensorFlow)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from sampot_jax import data
from sampot_jax.data import fake_data
from sampot_jax.data import splits as splits_lib
from sampot_jax.data import tfds_builder
from sampot_jax.runtime import settings

N = {"montgomery_team": 9, "montgomery_nlm": 9, "shenzhen": 9, "jsrt_scr": 3}
DATASET_SOURCES = list(N)


@pytest.fixture(scope="module", params=DATASET_SOURCES)
def built(request, tmp_path_factory):
  source = request.param
  root = tmp_path_factory.mktemp(source)
  ids = fake_data.write(source, root / "raw", n=N[source])
  builder = tfds_builder.prepare(source, root / "raw", root / "tfds")
  return source, root, ids, builder


def test_counts_and_splits_do_not_overlap(built):
  source, _, ids, builder = built
  split_ids = {}
  for split in splits_lib.SPLITS:
    examples = tfds_builder.read_split(builder, split)
    assert builder.info.splits[split].num_examples == len(examples)
    split_ids[split] = {e["id"] for e in examples}
  all_ids = set().union(*split_ids.values())
  assert sum(len(v) for v in split_ids.values()) == len(all_ids) == N[source]
  assert all_ids == set(ids)
  if source == "montgomery_team":  # fake splits.csv: i % 3
    assert split_ids["train"] == set(ids[0::3]) and split_ids["test"] == set(ids[2::3])


def test_features_shapes_dtypes(built):
  source, _, _, builder = built
  features = builder.info.features
  for key in ("image", "left", "right"):
    assert features[key].shape == (512, 512) and features[key].np_dtype == np.uint8
  ds = builder.as_data_source(split="train")
  ex = ds[0]
  assert ex["image"].shape == (512, 512) and ex["image"].dtype == np.uint8
  for key in ("left", "right"):
    assert set(np.unique(ex[key])) == {0, 1}
  meta = ex["metadata"]
  assert meta["dataset"].decode() == source
  expected_hw = (2048, 2048) if source == "jsrt_scr" else (80, 64)
  assert (int(meta["height"]), int(meta["width"])) == expected_hw
  assert meta["finding"].decode() in ("normal", "tuberculosis", "nodule")


def test_lungs_are_separated_and_oriented(built):
  _, _, _, builder = built
  for ex in tfds_builder.read_split(builder, "test"):
    left_x = np.nonzero(ex["left"])[1].mean()
    right_x = np.nonzero(ex["right"])[1].mean()
    assert left_x > 256 > right_x
    assert not (ex["left"] & ex["right"]).any()
    # Lungs are dark in every source (JSRT is inverted on reading).
    assert ex["image"][ex["left"]].mean() < ex["image"][~(ex["left"] | ex["right"])].mean()


def test_load_split_from_builder(built):
  source, root, _, _ = built
  config = settings.block(settings.Data())
  config.source, config.dir, config.tfds_dir = source, str(root / "raw"), str(root / "tfds")
  config.image_size = 32
  total = 0
  for split in data.SPLITS:
    ls = data.load_split(config, split)
    total += len(ls)
    assert ls.images.shape == (len(ls), 32, 32) and ls.left.dtype == bool
    assert ls.ids == sorted(ls.ids)
  assert total == N[source]
  assert "tensorflow" not in sys.modules


def test_builder_knows_its_layouts():
  names = [c.name for c in tfds_builder.ChestXrayLungs.BUILDER_CONFIGS]
  assert names == ["montgomery_team", "montgomery_nlm", "shenzhen", "jsrt_scr"]
  assert "manual" in tfds_builder.ChestXrayLungs.MANUAL_DOWNLOAD_INSTRUCTIONS.lower()


def test_deterministic_split_is_stratified_and_order_free():
  findings = {f"S{i:03d}": ("a" if i % 3 else "b") for i in range(244)}
  split = splits_lib.deterministic_split(findings)
  again = splits_lib.deterministic_split(dict(reversed(list(findings.items()))))
  assert split == again
  counts = {s: sum(v == s for v in split.values()) for s in splits_lib.SPLITS}
  for s, p in zip(splits_lib.SPLITS, splits_lib.PAPER_PROPORTIONS):
    assert abs(counts[s] - 244 * p / 122) <= 2
  for f in ("a", "b"):
    ids = [i for i in findings if findings[i] == f]
    share = sum(split[i] == "train" for i in ids) / len(ids)
    assert abs(share - 41 / 122) < 0.05


def test_prepared_data_follows_its_source_files(tmp_path):
  """Copied or touched source files reuse the prepared data; edited, added or removed ones stop
  the run with what changed and the folder to delete."""
  import os
  raw = tmp_path / "raw"
  ids = fake_data.write("montgomery_team", raw, n=9)
  tfds_builder.prepare("montgomery_team", raw, tmp_path / "tfds")
  image = next(raw.rglob(f"{ids[0]}*.png"))
  os.utime(image, ns=(1, 10**18))  # a new modification time, the same bytes
  tfds_builder.prepare("montgomery_team", raw, tmp_path / "tfds")
  data_ = bytearray(image.read_bytes())
  data_[-5] ^= 0xFF  # the same size, other bytes
  image.write_bytes(bytes(data_))
  with pytest.raises(ValueError, match=r"1 changed \(.*%s.*\).*rm -rf" % image.name):
    tfds_builder.prepare("montgomery_team", raw, tmp_path / "tfds")
  data_[-5] ^= 0xFF
  image.write_bytes(bytes(data_))  # restored: usable again
  tfds_builder.prepare("montgomery_team", raw, tmp_path / "tfds")
  (raw / "notes.txt").write_text("new")
  with pytest.raises(ValueError, match=r"1 added \(notes.txt\)"):
    tfds_builder.prepare("montgomery_team", raw, tmp_path / "tfds")


def test_runs_started_together_prepare_the_data_once(tmp_path):
  """Two processes preparing the same source at once: one builds, the other waits and reuses."""
  import subprocess
  from pathlib import Path
  raw = tmp_path / "raw"
  fake_data.write("montgomery_team", raw, n=9)
  code = ("import sys; from sampot_jax.data import tfds_builder; "
          "b = tfds_builder.prepare('montgomery_team', sys.argv[1], sys.argv[2]); "
          "print(b.info.splits['train'].num_examples)")
  root = Path(__file__).resolve().parents[1]
  procs = [subprocess.Popen([sys.executable, "-c", code, str(raw), str(tmp_path / "tfds")],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for proc, (out, err) in zip(procs, outs):
    assert proc.returncode == 0, err[-2000:]
    assert out.split()[-1] == "3"


def test_a_copy_prepared_without_content_hashes_says_so(tmp_path):
  """A fingerprint from before content hashes ([size, mtime] only) cannot tell a copied folder
  from an edited one: the error says that, instead of only listing every file as changed."""
  (tmp_path / "a.png").write_bytes(b"abc")
  now = tfds_builder.source_files(tmp_path, content=False)
  size, mtime = now["a.png"][:2]
  assert tfds_builder._changes({"a.png": [size, mtime]}, now, tmp_path) == ""
  message = tfds_builder._changes({"a.png": [size, mtime - 1]}, now, tmp_path)
  assert message.startswith("1 changed (a.png)") and "predates content hashes" in message


def test_tests_prepare_data_in_their_own_folder():
  """The default TFDS folder during tests is this session's (conftest), not ~/tensorflow_datasets:
  CI's home kept data prepared by an older commit and from another copy of the data."""
  from tests import conftest
  assert tfds_builder.prepared_dir(conftest.MONTGOMERY).parent == Path(conftest.TFDS_DIR)
