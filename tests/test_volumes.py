"""refine on NIfTI volumes (data/volumes.py): slices or a 3-D box as prompts, one mask volume
with the input's affine and header; a synthetic volume, and the real MNI152 T1 template from
nilearn's wheel (fetched like LiteMedSAM's, never committed)."""
import json

import numpy as np
from PIL import Image
import pytest

from sampot_jax import errors
from sampot_jax.data import volumes
from sampot_jax.tasks import refine
from tests.helpers import read_rows
from tests.helpers import refine_tiny_config
from tests.helpers import refused_inputs

nibabel = pytest.importorskip("nibabel")


def synthetic_volume(path, shape=(40, 48, 6)):
  """int16 volume, a bright block in slices 1-4; an oblique affine and a description, so that
  the mask volume must carry them over."""
  data = np.full(shape, 100, np.int16)
  data[10:30, 12:40, 1:5] = 900
  affine = np.array([[0.9, 0.1, 0, -20], [0, 1.1, 0.2, 15], [0, 0, 3.0, -7], [0, 0, 0, 1]])
  image = nibabel.Nifti1Image(data, affine)
  image.header["descrip"] = b"sampot test volume"
  image.header.set_xyzt_units("mm", "sec")
  path.parent.mkdir(parents=True, exist_ok=True)
  nibabel.save(image, str(path))
  return path


def test_a_slice_is_the_volume_at_voxel_x_y_z(tmp_path):
  path = synthetic_volume(tmp_path / "v.nii.gz")
  assert volumes.read_shape(path) == (40, 48, 6)
  volume = volumes.read_volume(path)
  image = volumes.slice_image(volume, 2)
  assert image.size == (48, 40)  # Y rows, X columns
  assert image.pixels[12, 10] == 255 and image.pixels[11, 10] == 0  # voxel (10, 12, 2): bright
  assert image.pixels[12, 9] == 0                                   # voxel (9, 12, 2): dark


def test_a_3d_box_refines_its_slices_into_one_mask_volume(tmp_path):
  images = tmp_path / "images"
  path = synthetic_volume(images / "sub" / "v.nii.gz")
  prompts = tmp_path / "p.csv"
  prompts.write_text("file,x0,y0,z0,x1,y1,z1\nsub/v.nii.gz,8,10,1,32,42,3\n")
  out = tmp_path / "out"
  summary = refine.run(refine_tiny_config(images, prompts), out)
  assert summary["processed"] == 3 and summary["mask_volumes"] == ["masks/sub/v.nii.gz"]
  rows = read_rows(out / "results.csv")
  assert [(r["file"], r["slice"]) for r in rows] == [("sub/v.nii.gz", str(z)) for z in (1, 2, 3)]
  assert all(r["initial_x0"] == "8.0" and r["initial_y1"] == "42.0" for r in rows)
  written = nibabel.load(str(out / "masks" / "sub" / "v.nii.gz"))
  source = nibabel.load(str(path))
  np.testing.assert_array_equal(written.affine, source.affine)
  assert written.header["descrip"] == source.header["descrip"]
  assert written.header.get_xyzt_units() == ("mm", "sec")
  assert written.header.get_data_dtype() == np.uint8
  masks = np.asarray(written.dataobj)
  assert masks.shape == (40, 48, 6) and set(np.unique(masks)) <= {0, 1}
  assert not masks[:, :, [0, 4, 5]].any()  # slices without a prompt
  for z in (1, 2, 3):
    png = np.asarray(Image.open(out / "masks" / "sub" / "v" / f"slice_{z:04d}.png")) > 0
    np.testing.assert_array_equal(masks[:, :, z].T, png)
  # A rerun finds every slice done; one slice's prompt changed redoes that slice only.
  assert refine.run(refine_tiny_config(images, prompts), out)["already_done"] == 3
  prompts.write_text("file,slice,x0,y0,x1,y1\nsub/v.nii.gz,1,8,10,32,42\n"
                     "sub/v.nii.gz,2,8,10,32,42\nsub/v.nii.gz,3,9,10,32,42\n")
  summary = refine.run(refine_tiny_config(images, prompts), out)
  assert summary["processed"] == 1 and summary["already_done"] == 2


def test_bad_slices_are_named_before_any_model_loads(tmp_path, monkeypatch):
  images = tmp_path / "images"
  synthetic_volume(images / "v.nii")
  prompts = tmp_path / "p.csv"
  prompts.write_text("file,slice,x0,y0,x1,y1\nv.nii,6,8,10,32,42\nv.nii,1.5,8,10,32,42\n"
                     "v.nii,2,8,10,32,42\nv.nii,2,1,1,5,5\n")
  text = refused_inputs(refine_tiny_config(images, prompts), tmp_path / "out", monkeypatch)
  assert "v.nii (prompts CSV line 2): has 6 slices (0 to 5); slice 6 is not one of them" in text
  assert "v.nii (prompts CSV line 3): slice=1.5 is not a slice number" in text
  assert "the slice 2 has 2 prompt rows (lines 4, 5); give one per slice" in text
  prompts.write_text("file,x0,y0,x1,y1\nv.nii,8,10,32,42\n")
  with pytest.raises(errors.BadInputsError, match="v.nii .*is a volume: give its slices"):
    refine.run(refine_tiny_config(images, prompts), tmp_path / "out")


@pytest.mark.slow
def test_the_mni152_template_round_trips_its_affine_and_header(mni_t1, tmp_path):
  """A real MRI volume (197 x 233 x 189, 1 mm, MNI space): two axial slices prompted with a box
  around the brain; the mask volume overlays the template (same affine, qform and sform)."""
  images = tmp_path / "images"
  images.mkdir()
  (images / "mni.nii.gz").write_bytes(mni_t1.read_bytes())
  source = nibabel.load(str(images / "mni.nii.gz"))
  assert source.shape == (197, 233, 189)
  prompts = tmp_path / "p.csv"
  prompts.write_text("file,slice,x0,y0,x1,y1\nmni.nii.gz,90,30,25,165,210\n"
                     "mni.nii.gz,100,30,25,165,210\n")
  out = tmp_path / "out"
  summary = refine.run(refine_tiny_config(images, prompts), out)
  assert summary["processed"] == 2
  written = nibabel.load(str(out / "masks" / "mni.nii.gz"))
  np.testing.assert_array_equal(written.affine, source.affine)
  np.testing.assert_array_equal(written.header.get_qform(), source.header.get_qform())
  np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
  assert written.header.get_zooms() == source.header.get_zooms()
  masks = np.asarray(written.dataobj)
  assert masks.shape == source.shape and not masks[:, :, :90].any()
  image = volumes.slice_image(volumes.read_volume(images / "mni.nii.gz"), 90)
  assert image.size == (233, 197) and (image.pixels > 50).mean() > 0.3  # the head fills it
  assert json.loads((out / "summary.json").read_text())["mask_volumes"] == ["masks/mni.nii.gz"]
