"""Baselines, the clicks file, the verdicts, the embedding cache, and the real config's stop."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from configs import evolve as evolve_config
from sampot_jax import errors
from sampot_jax.data import prompt_csv
from sampot_jax.regressor import store
from sampot_jax.sam import frozen
from sampot_jax.sam import model as sam_model
from sampot_jax.sam.port import convert as port_sam
from sampot_jax.sampot import baselines
from sampot_jax.sampot import metrics
from sampot_jax.sampot import prompts
from sampot_jax.storage import embedding_cache
from sampot_jax.tasks import evaluate

IDS = ["a", "b", "c"]


def write(path, text):
  path.write_text(text)
  return path


# ---------------------------------------------------------------------------
# Initial clicks.


def test_centroid_clicks_are_x_y_means():
  targets = np.zeros((2, 10, 12), bool)
  targets[0, 2:5, 6:10] = True  # rows 2..4, columns 6..9
  targets[1, 7, 1] = True
  np.testing.assert_allclose(prompts.centroid_clicks(targets), [[7.5, 3.0], [1.0, 7.0]])
  targets[1] = False
  with pytest.raises(ValueError, match="image 'b' is empty"):
    prompts.centroid_clicks(targets, ids=["a", "b"])


def test_clicks_file_is_read_in_id_order(tmp_path):
  path = write(tmp_path / "clicks.csv", "id,x,y\nc,1,2\na,3.5,4\nb,0,9\n")
  np.testing.assert_array_equal(prompt_csv.prompts_for_ids(path, IDS, (10, 10)),
                                [[3.5, 4], [0, 9], [1, 2]])


@pytest.mark.parametrize("text, match", [
    ("id,x,y\na,1,1\nb,2,2\nzz,3,3\nc,1,1\n", r"line 4: image id 'zz' is not in the evaluated"),
    ("id,x,y\na,1,1\nb,2,2\nc,10,3\n", r"outside the 10x10 .* image 'c' at \(x, y\) = \[10.0, 3.0\]"),
    ("id,x,y\na,1,1\nb,2,-1\nc,1,1\n", r"image 'b'"),
    ("id,x,y\na,1,1\nb,2,2\n", r"no prompt for 1 image\(s\), e.g. \['c'\]"),
    ("id,x,y\na,1,1\na,2,2\nb,1,1\nc,1,1\n", r"line 3: image id 'a' already has a prompt on line 2"),
    ("id,col,row\na,1,1\n", r"expected id,x0,y0,x1,y1 \(boxes\), id,x,y \(clicks\)"),
    ("id,x,y\na,one,1\n", r"line 2: x='one'"),
    ("id,x,y\na,nan,1\nb,1,1\nc,1,1\n", r"finite"),
])
def test_bad_clicks_files_name_the_problem(tmp_path, text, match):
  path = write(tmp_path / "clicks.csv", text)
  with pytest.raises(ValueError, match=match):
    prompt_csv.prompts_for_ids(path, IDS, (10, 10))


def test_missing_clicks_file(tmp_path):
  with pytest.raises(errors.BadInputError, match="is not a file.*id,x,y"):
    prompt_csv.prompts_for_ids(tmp_path / "none.csv", IDS, (10, 10))


# ---------------------------------------------------------------------------
# Grid baselines and verdicts.


def test_grid_clicks_are_cell_centres():
  grid = baselines.grid_clicks((20, 40), 4)
  assert grid.shape == (16, 2)
  np.testing.assert_allclose(grid[:4, 0], [4.5, 14.5, 24.5, 34.5])
  np.testing.assert_allclose(grid[::4, 1], [2.0, 7.0, 12.0, 17.0])


def test_mask_dice_matches_dice():
  rng = np.random.default_rng(0)
  a = rng.random((5, 9, 9)) > 0.5
  b = rng.random((5, 9, 9)) > 0.3
  a[4] = b[4] = False  # two empty masks score 1
  expected = [metrics.dice(x, y) for x, y in zip(a, b)]
  np.testing.assert_allclose(np.asarray(metrics.mask_dice(jnp.asarray(a), jnp.asarray(b))),
                             expected, rtol=1e-6)


def test_grid_search_keeps_the_best_allowed_finite_score():
  scores = np.array([[0.9, 0.2, 0.5, np.nan], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]])
  allowed = np.array([[False, True, True, True], [True, True, True, True], [False] * 4])
  index, found = baselines.grid_search(scores, allowed)
  np.testing.assert_array_equal(index, [2, 3, -1])
  np.testing.assert_array_equal(found, [True, True, False])
  masks = np.zeros((1, 4, 4), bool)
  masks[0, 1, 2] = True
  np.testing.assert_array_equal(baselines.inside(masks, np.array([[2.2, 0.6], [1.4, 1.4]])),
                                [[True, False]])


def test_compare_counts_and_shares():
  out = evaluate.compare(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0.6, 0.52, 0.4, 0.5]))
  assert (out["improved"], out["degraded"], out["unchanged"]) == (2, 1, 1)
  assert out["significantly_improved"] == 1 and out["significantly_degraded"] == 1
  assert out["improved_share"] == 0.5
  assert out["mean_dice_change"] == pytest.approx((0.1 + 0.02 - 0.1) / 4)


def test_judge_picks_methods_from_the_maps():
  target = np.zeros((1, 8, 8), bool)
  target[0, 2:6, 2:6] = True
  initial = target.copy()
  best = np.zeros_like(target)
  best[0, 2:6, 2:5] = True
  grid = baselines.grid_clicks((8, 8), 2)  # (1.5, 1.5), (5.5, 1.5), (1.5, 5.5), (5.5, 5.5)
  out = dict(initial_mask=initial, best_mask=best, multimask_mask=~target,
             initial_score=np.array([0.4]), best_score=np.array([0.5]),
             initial_prompt=np.array([[3.0, 3.0]]), best_prompt=np.array([[3.0, 4.0]]),
             grid_clicks=grid, grid_score=np.array([[0.3, 0.1, 0.9, 0.8]]),
             grid_dice=np.array([[0.2, 0.7, 0.6, 0.5]]))
  verdict = evaluate.judge(out, target, evolve_config.get_config())
  dice = verdict["dice"]
  assert dice["initial"][0] == 1.0 and dice["multimask"][0] == 0.0
  assert dice["evolved"][0] == pytest.approx(2 * 12 / 28)
  assert verdict["accepted"][0] and dice["safeguarded"][0] == dice["evolved"][0]
  # Only grid click 0 falls on the initial mask (pixel (2, 2)); the others round to
  # column or row 6. So the search keeps it although click 2 scores higher.
  assert dice["grid_search"][0] == 0.2
  np.testing.assert_array_equal(verdict["grid_prompt"][0], grid[0])
  assert dice["true_dice_grid"][0] == 0.7
  np.testing.assert_array_equal(verdict["true_dice_grid_prompt"][0], grid[1])


# ---------------------------------------------------------------------------
# Embedding cache.


class CountingEncoder:
  """Stands in for the image encoder: counts images, returns their mean as embedding."""

  def __init__(self):
    self.images = 0

  def __call__(self, images):
    self.images += len(images)
    return jnp.asarray(images, jnp.float32).mean((1, 2))[:, None, None, None] * jnp.ones(
        (1, 2, 2, 3))


def test_cache_encodes_each_image_once(tmp_path):
  config = sam_model.sam_config("vit_b", img_size=32)
  images = np.random.default_rng(0).integers(0, 256, (5, 12, 12), dtype=np.uint8)
  encoder = CountingEncoder()
  cache = embedding_cache.EmbeddingCache(tmp_path, "ckpt-a", config)
  first, encoded = cache.embeddings(images, encoder, batch_size=2)
  assert encoded == 5 and encoder.images == 6  # 2 + 2 + (1 padded to 2)
  # A later run (a new cache object) reads every embedding back.
  again = embedding_cache.EmbeddingCache(tmp_path, "ckpt-a", config)
  second, encoded = again.embeddings(images[::-1], encoder, batch_size=2)
  assert encoded == 0 and encoder.images == 6
  np.testing.assert_array_equal(second, first[::-1])
  # Another checkpoint or SAM config never meets these embeddings.
  _, encoded = embedding_cache.EmbeddingCache(tmp_path, "ckpt-b", config).embeddings(
      images[:1], encoder)
  assert encoded == 1
  other = sam_model.sam_config("vit_b", img_size=64)
  _, encoded = embedding_cache.EmbeddingCache(tmp_path, "ckpt-a", other).embeddings(
      images[:1], encoder)
  assert encoded == 1
  # A damaged file is encoded again.
  cache.path(images[2]).write_bytes(b"not npy")
  _, encoded = cache.embeddings(images, encoder)
  assert encoded == 1
  assert not list(tmp_path.rglob(".*"))  # no temporary files left


def test_cache_refuses_mixed_sizes(tmp_path):
  cache = embedding_cache.EmbeddingCache(tmp_path, "k", sam_model.sam_config("vit_b"))
  with pytest.raises(ValueError, match="mixes sizes"):
    cache.embeddings([np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8)],
                     CountingEncoder())


# ---------------------------------------------------------------------------
# Real configs without a checkpoint.


def test_real_config_without_checkpoint_says_how_to_port(tmp_path):
  config = evolve_config.get_config()
  config.sam.checkpoint_dir = str(tmp_path / "no_sam")
  config.sam.fetch_if_missing = False
  with pytest.raises(errors.MissingCheckpointError,
                     match=r"(?s)No ported SAM checkpoint.*configs/port_sam.py.*"
                     r"python -m ports.sam --checkpoint sam_vit_b_01ec64.pth"):
    evaluate.run(config, tmp_path / "run")


def test_random_models_from_config(tmp_path):
  from configs import smoke  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  sam = frozen.from_config(config.sam)
  params, sam_config, key = sam.params, sam.config, sam.key
  assert sam_config.img_size == 64 and key.startswith("random-")
  assert frozen.from_config(config.sam).key == key  # same seed, same weights, same key
  scorer = store.from_config(config.regressor)
  image = jnp.zeros((2, 64, 64))
  score = scorer(image, image)
  assert score.shape == (2,) and np.isfinite(np.asarray(score)).all()
  # The random params have exactly the model's tree and shapes.
  assert jax_shapes(params) == jax_shapes(sam_model.param_shapes(sam_config))


def jax_shapes(tree):
  return {k: jax_shapes(v) if isinstance(v, dict) else list(v.shape) for k, v in tree.items()}


def test_fetch_if_missing_hands_over_to_the_fetching_loader(tmp_path, monkeypatch):
  calls = []
  tiny = sam_model.sam_config("vit_b", img_size=32, embed_dim=16, depth=1, num_heads=1,
                              global_attn_indexes=(0,), window_size=2, prompt_embed_dim=16)

  def fake_fetch_and_port(directory, variant):  # what fetching + porting leaves behind
    calls.append((directory, variant))
    directory.mkdir()
    (directory / "manifest.json").write_text(json.dumps({"source_sha256": "ab" * 32}))
    return frozen.random_sam_params(tiny), tiny

  monkeypatch.setattr(port_sam, "fetch_and_port", fake_fetch_and_port)
  config = evolve_config.get_config()
  config.sam.checkpoint_dir = str(tmp_path / "sam")
  config.sam.fetch_if_missing = True
  sam = frozen.from_config(config.sam)
  loaded_config, key = sam.config, sam.key
  assert calls == [(tmp_path / "sam", "vit_b")]
  assert loaded_config.img_size == 32 and key == "vit_b-" + "ab" * 8


def test_offline_fetch_says_where_to_put_the_file(tmp_path, monkeypatch):
  from sampot_jax.storage import checkpoints  # pylint: disable=g-import-not-at-top

  def offline(variant):
    raise errors.DownloadError(f"could not download; put it at /cache/{variant}.pth")

  monkeypatch.setattr(checkpoints, "fetch_checkpoint", offline)
  config = evolve_config.get_config()
  assert config.sam.fetch_if_missing  # the main job fetches by default
  config.sam.checkpoint_dir = str(tmp_path / "sam")
  with pytest.raises(errors.MissingCheckpointError,
                     match=r"(?s)could not be fetched.*put it at /cache/vit_b.pth.*ports.sam"):
    frozen.from_config(config.sam)
  assert not (tmp_path / "sam").exists()


@pytest.mark.needs_data
@pytest.mark.slow
def test_two_processes_under_jax_distributed_equal_one(tmp_path):
  """lite_medsam_evaluate_tiny (4 Montgomery test images, every box baseline) under
  jax.distributed, 2 CPU processes on localhost: the batch is split over both processes'
  devices, process 0 writes. The same results as one process, up to float32 rounding (each
  device now runs 2 lanes, not 4): measured, 6.9e-5 px on the boxes after 4 Adam steps."""
  import csv  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  args = ["--config", "configs/lite_medsam_evaluate_tiny.py", "--config.max_images=4",
          "--config.batch_size=4"]
  helpers.run_main_processes(*args, workdir=tmp_path / "two")
  one = helpers.run_main(*args, "--workdir", tmp_path / "one")
  assert one.returncode == 0, one.stderr[-3000:]
  rows = {}
  for name in ("one", "two"):
    with open(tmp_path / name / "results.csv", newline="") as f:
      rows[name] = list(csv.DictReader(f))
  assert [r["id"] for r in rows["two"]] == [r["id"] for r in rows["one"]] and len(rows["one"]) == 4
  for a, b in zip(rows["two"], rows["one"]):
    for field, value in a.items():
      try:
        assert float(value) == pytest.approx(float(b[field]), abs=1e-3), (a["id"], field)
      except ValueError:
        assert value == b[field], (a["id"], field)
  two, single = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("two", "one"))
  assert two["num_devices"] == 2 and single["num_devices"] == 1
  for method, stats in single["dice"].items():
    assert two["dice"][method]["mean"] == pytest.approx(stats["mean"], abs=1e-6), method
