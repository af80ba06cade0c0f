"""refine on a DICOM series folder (data/dicom_series.py) as one volume: the series written from a
NIfTI volume (synthetic and oblique; the real MNI152 template) reads back as that volume and
refines to its masks, with its affine; nibabel's own DICOM reader checks the geometry; bad
folders are named before any model loads."""
import numpy as np
from PIL import Image
import pytest

from sampot_jax.data import dicom_series
from sampot_jax.data import images as images_lib
from sampot_jax.data import volumes
from sampot_jax.tasks import refine
from tests.helpers import read_rows
from tests.helpers import refine_tiny_config
from tests.helpers import refused_inputs
from tests.helpers import write_series

nibabel = pytest.importorskip("nibabel")


def oblique_affine():
  """Right-handed, oblique (30 degrees about (1, 1, 1)), voxels 0.8 x 0.9 x 2.5 mm."""
  axis = np.ones(3) / np.sqrt(3.0)
  angle = np.deg2rad(30.0)
  cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
  affine = np.eye(4)
  affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
  affine[:3, 3] = [-31.5, 12.25, 40.0]
  return affine


def block_volume(shape=(40, 48, 6)):
  data = np.full(shape, 100, np.uint16)
  data[10:30, 12:40, 1:5] = 900
  data[5, 7, :] = np.arange(shape[2]) * 10 + 1000  # tells the slices apart
  return data


def tiny_config(images, prompts):
  config = refine_tiny_config(images, prompts)
  config.evolve.num_starts = 1  # no restarts: their keys follow the file's name
  return config


def test_a_series_reads_as_the_volume_it_was_written_from(tmp_path):
  data, affine = block_volume(), oblique_affine()
  files = write_series(tmp_path / "ct", data, affine)
  series = dicom_series.read_header(tmp_path / "ct")
  assert series.shape == (40, 48, 6) and volumes.read_shape(tmp_path / "ct") == (40, 48, 6)
  assert [f.name for f in series.files] == [f.name for f in files]  # by position, not by name
  # The tags hold 6 decimals.
  np.testing.assert_allclose(series.affine, affine, atol=2e-5)
  volume = volumes.read_volume(tmp_path / "ct")
  np.testing.assert_array_equal(volume.data, data.astype(np.float32))
  nifti_path = tmp_path / "ct.nii.gz"
  nibabel.save(nibabel.Nifti1Image(data, affine), str(nifti_path))
  as_nifti = volumes.read_volume(nifti_path)
  for z in range(6):
    np.testing.assert_array_equal(volumes.slice_image(volume, z).pixels,
                                  volumes.slice_image(as_nifti, z).pixels)


def test_the_geometry_agrees_with_nibabels_dicom_reader(tmp_path):
  """nibabel.nicom maps a slice's (row, column) voxels to DICOM's LPS+ patient frame on its own
  reading of the standard: our affine (RAS+, x = column) must place every voxel where it does."""
  from nibabel.nicom import dicomwrappers  # pylint: disable=g-import-not-at-top
  files = write_series(tmp_path / "ct", block_volume(), oblique_affine())
  series = dicom_series.read_header(tmp_path / "ct")
  for z in (0, 3, 5):
    wrapper = dicomwrappers.wrapper_from_file(str(files[z]))
    for row, column in ((0, 0), (7, 5), (47, 39)):
      lps = wrapper.affine @ np.array([row, column, 0, 1.0])
      ras = series.affine @ np.array([column, row, z, 1.0])
      np.testing.assert_allclose(ras[:3], lps[:3] * [-1, -1, 1], atol=1e-4)
    # nibabel's data is (rows, columns) too: its pixel (7, 5) is our voxel (5, 7).
    assert wrapper.get_data()[7, 5] == volumes.read_volume(tmp_path / "ct").data[5, 7, z]


def test_the_series_window_is_the_one_a_2d_read_of_its_slices_uses(tmp_path):
  files = write_series(tmp_path / "ct", block_volume(), oblique_affine(), window=(500, 400))
  volume = volumes.read_volume(tmp_path / "ct")
  assert volume.window == (500.0, 400.0, "LINEAR")
  for z in range(6):
    image = volumes.slice_image(volume, z)
    np.testing.assert_array_equal(image.pixels, images_lib.read_image(files[z]).pixels)
    assert image.intensity.startswith("series window 500/400")


def test_refine_on_a_series_folder_equals_refine_on_its_nifti(tmp_path):
  data, affine = block_volume(), oblique_affine()
  nifti_images, series_images = tmp_path / "nifti", tmp_path / "series"
  nifti_images.mkdir()
  nibabel.save(nibabel.Nifti1Image(data, affine), str(nifti_images / "v.nii.gz"))
  write_series(series_images / "sub" / "v", data, affine)
  (nifti_prompts := tmp_path / "n.csv").write_text(
      "file,x0,y0,z0,x1,y1,z1\nv.nii.gz,8,10,1,32,42,3\n")
  (series_prompts := tmp_path / "s.csv").write_text(
      "file,x0,y0,z0,x1,y1,z1\n./sub/v/,8,10,1,32,42,3\n")  # a trailing / names it too
  nifti_summary = refine.run(tiny_config(nifti_images, nifti_prompts), tmp_path / "out_n")
  out = tmp_path / "out_s"
  summary = refine.run(tiny_config(series_images, series_prompts), out)
  assert summary["processed"] == 3 and summary["skipped"] == 0
  assert summary["mask_volumes"] == ["masks/sub/v.nii.gz"] and nifti_summary["processed"] == 3
  rows = read_rows(out / "results.csv")
  assert [(r["file"], r["slice"]) for r in rows] == [("sub/v", str(z)) for z in (1, 2, 3)]
  written = nibabel.load(str(out / "masks" / "sub" / "v.nii.gz"))
  expected = nibabel.load(str(tmp_path / "out_n" / "masks" / "v.nii.gz"))
  np.testing.assert_allclose(written.affine, affine, atol=2e-5)
  np.testing.assert_allclose(written.header.get_sform(), affine, atol=2e-5)
  np.testing.assert_allclose(written.header.get_qform(), affine, atol=2e-5)
  masks = np.asarray(written.dataobj)
  assert masks.any() and written.header.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(masks, np.asarray(expected.dataobj))
  png = np.asarray(Image.open(out / "masks" / "sub" / "v" / "slice_0002.png")) > 0
  np.testing.assert_array_equal(masks[:, :, 2].T, png)
  # A rerun finds the slices done; a slice file replaced makes the series another volume.
  assert refine.run(tiny_config(series_images, series_prompts), out)["already_done"] == 3
  victim = sorted((series_images / "sub" / "v").iterdir())[0]
  victim.write_bytes(victim.read_bytes()[:-2] + b"\x01\x00")
  assert refine.run(tiny_config(series_images, series_prompts), out)["processed"] == 3


def test_bad_series_folders_are_named_before_any_model_loads(tmp_path, monkeypatch):
  images = tmp_path / "images"
  data, affine = block_volume(), oblique_affine()
  write_series(images / "two", data, affine, series_uid="1.2.3.4")
  write_series(images / "two", data[:, :, :2], affine, series_uid="1.2.3.5", prefix="B")
  gap = write_series(images / "gap", data, affine)
  gap[3].unlink()  # a missing slice
  same = write_series(images / "same", data[:, :, :3], affine)
  same[1].write_bytes(same[0].read_bytes())  # one slice twice
  (images / "empty").mkdir()
  (images / "empty" / "notes.txt").write_text("no DICOM here")
  (prompts := tmp_path / "p.csv").write_text(
      "file,slice,x0,y0,x1,y1\ntwo,1,8,10,32,42\ngap,1,8,10,32,42\nsame,1,8,10,32,42\n"
      "empty,0,8,10,32,42\n")
  text = refused_inputs(tiny_config(images, prompts), tmp_path / "out", monkeypatch)
  assert "two (prompts CSV line 2): holds 2 DICOM series (1.2.3.4: " in text
  assert "put each series in a folder of its own" in text
  assert "gap (prompts CSV line 3): its slice gaps range from 2.5 to 5 mm (a missing slice?)" in text
  assert "same (prompts CSV line 4): IM" in text and "lie at the same position" in text
  assert "empty (prompts CSV line 5): is a folder without DICOM files" in text
  # Files inside a named folder are the series, not images without a row.
  assert "has no row" not in text
  write_series(tmp_path / "more" / "ok", data, affine)
  (prompts := tmp_path / "q.csv").write_text("file,x0,y0,x1,y1\nok,8,10,32,42\n")
  assert "ok (prompts CSV line 2): is a volume: give its slices" in refused_inputs(
      tiny_config(tmp_path / "more", prompts), tmp_path / "out", monkeypatch)


@pytest.mark.slow
def test_the_mni152_template_as_a_dicom_series_refines_as_the_nifti(mni_t1, tmp_path):
  """The real MRI volume (197 x 233 x 189, 1 mm) written as 189 DICOM slices: two slices refined
  from the series give the NIfTI's masks, in a mask volume with the template's affine."""
  source = nibabel.load(str(mni_t1))
  data = np.asarray(source.dataobj)
  assert data.shape == (197, 233, 189) and data.dtype == np.uint8
  write_series(tmp_path / "series" / "mni", data, source.affine)
  (tmp_path / "nifti").mkdir()
  (tmp_path / "nifti" / "mni.nii.gz").write_bytes(mni_t1.read_bytes())
  for kind, name in (("series", "mni"), ("nifti", "mni.nii.gz")):
    (tmp_path / f"{kind}.csv").write_text(f"file,slice,x0,y0,x1,y1\n{name},90,30,25,165,210\n"
                                          f"{name},100,30,25,165,210\n")
    summary = refine.run(tiny_config(tmp_path / kind, tmp_path / f"{kind}.csv"),
                         tmp_path / f"out_{kind}")
    assert summary["processed"] == 2 and summary["mask_volumes"] == ["masks/mni.nii.gz"]
  written = nibabel.load(str(tmp_path / "out_series" / "masks" / "mni.nii.gz"))
  expected = nibabel.load(str(tmp_path / "out_nifti" / "masks" / "mni.nii.gz"))
  np.testing.assert_array_equal(written.affine, source.affine)
  assert written.header.get_zooms() == source.header.get_zooms()
  masks = np.asarray(written.dataobj)
  assert masks[:, :, 90].any() and not masks[:, :, :90].any()
  np.testing.assert_array_equal(masks, np.asarray(expected.dataobj))
