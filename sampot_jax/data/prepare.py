"""The Montgomery set from its original download to the layout the project reads.

    manifest = prepare_montgomery("NLM-MontgomeryCXRSet.zip", "data/montgomery")

The NLM's zip (MontgomerySet/CXR_png/MCUCXR_NNNN_F.png, ManualMask/leftMask/ and rightMask/,
full-size 4020 x 4892 radiographs) becomes the `montgomery_team` layout (data/sources.py):
images/ID.png (8-bit, SIZE x SIZE), masks/left/ID.png and masks/right/ID.png (0/255, a pixel
set when over half its area is lung), splits.csv (the project's fixed split, shipped in
data/splits/montgomery.csv), README.md (provenance, terms) and prepared.json (every file's
sha256). The zip is checked against the sha256 of the NLM's release first; each member by its
zip CRC as it is read; the patient's left lung is the mask lying right in the image (the
standard view), whatever its folder says. Written to a temporary folder, then renamed: a cut
run leaves nothing half-made. Run again on a prepared folder, it checks every file's sha256.

The NLM asks that the set not be shared outside a research group, so the project never ships
it: each user downloads it (DOWNLOAD_PAGE) and runs the prepare command.
"""
import csv
import io
import json
import os
from pathlib import Path
import shutil
import zipfile

from absl import logging
import numpy as np
from PIL import Image as PILImage

from sampot_jax import errors
from sampot_jax.data import lungs
from sampot_jax.data import raw
from sampot_jax.data import splits as splits_lib
from sampot_jax.storage import checkpoints
from sampot_jax.storage import files

DOWNLOAD_PAGE = ("https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/"
                 "Montgomery-County-CXR-Set/MontgomerySet/index.html")
ZIP_NAME = "NLM-MontgomeryCXRSet.zip"
# The sha256 that public downloaders check the NLM's zip against (e.g. torch_em's Montgomery
# loader); not verified here (no internet): a zip that differs is refused with both hashes, and
# --config.zip_sha256='' accepts it.
ZIP_SHA256 = "54601e952315d8f67383e9202a6e145997ade429f54f7e0af44b4e158714f424"
SPLITS = Path(__file__).parent / "splits" / "montgomery.csv"
MANIFEST = "prepared.json"
COMMAND = ("python main.py --config configs/prepare_montgomery.py "
           f"--config.zip=PATH/{ZIP_NAME} --workdir DIR")


def how_to_get() -> str:
  """The sentence a missing Montgomery folder is met with."""
  return (f"Download {ZIP_NAME} from the NLM ({DOWNLOAD_PAGE}), then run\n  {COMMAND}\n"
          "and pass --config.data.dir=DIR.")


def _members(archive: zipfile.ZipFile) -> dict:
  """{(folder, id): member name} for the zip's CXR_png, leftMask and rightMask PNGs."""
  found = {}
  for name in archive.namelist():
    parts = Path(name).parts
    if len(parts) < 2 or not name.lower().endswith(".png") or parts[-1].startswith("."):
      continue
    folder = {"CXR_png": "image", "leftMask": "left", "rightMask": "right"}.get(parts[-2])
    if folder:
      found[(folder, Path(name).stem)] = name
  return found


def _decode(archive: zipfile.ZipFile, member: str, zip_path: Path, scratch: Path, read):
  """One member decoded by `read` (raw.read_image or raw.read_mask_values); the zip's CRC is
  checked as the member is read."""
  try:
    data = archive.read(member)
  except (zipfile.BadZipFile, OSError) as e:
    raise errors.BadInputError(zip_path, f"member {member} is damaged ({e}); download the zip "
                               "again") from None
  path = scratch / Path(member).name
  path.write_bytes(data)
  try:
    return read(path)
  finally:
    path.unlink()


def _png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  PILImage.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def verify(out: Path) -> dict:
  """A prepared folder's manifest, every file checked against its sha256."""
  try:
    manifest = json.loads((out / MANIFEST).read_text())
  except (OSError, ValueError) as e:
    raise errors.BadInputError(out / MANIFEST, f"cannot be read ({e}); delete {out} and run "
                               f"the prepare command again:\n  {COMMAND}") from None
  bad = [rel for rel, digest in manifest["files"].items()
         if not (out / rel).is_file() or checkpoints.sha256_file(out / rel) != digest]
  if bad:
    raise errors.BadInputError(out / MANIFEST, f"{len(bad)} prepared file(s) are missing or "
                               f"changed (e.g. {', '.join(bad[:3])}); delete {out} and run "
                               f"the prepare command again:\n  {COMMAND}")
  return manifest


def prepare_montgomery(zip_path, out, image_size: int = 512, zip_sha256: str = ZIP_SHA256,
                       splits_csv=SPLITS) -> dict:
  """The NLM zip -> `out` in the montgomery_team layout; returns the manifest (see the module
  docstring). An existing prepared `out` is verified, not rewritten."""
  zip_path, out = Path(zip_path).expanduser(), Path(out).expanduser()
  if (out / MANIFEST).is_file():
    manifest = verify(out)
    logging.info("%s is already prepared: %d files match their sha256.", out,
                 len(manifest["files"]))
    return manifest
  if out.exists() and any(out.iterdir()):
    raise errors.OutputExistsError(f"{out} exists and is not a prepared Montgomery folder; "
                                   "give an empty or new --workdir.")
  if not zip_path.is_file():
    raise errors.MissingInputError(f"config.zip={str(zip_path)!r} does not exist. "
                                   + how_to_get())
  digest = checkpoints.sha256_file(zip_path)
  if zip_sha256 and digest != zip_sha256:
    raise errors.BadInputError(zip_path, f"has sha256 {digest}, not the NLM release's "
                               f"{zip_sha256}: download it again (an interrupted download?), "
                               "or pass --config.zip_sha256='' to accept this file.")
  table = splits_lib.read_splits_csv(splits_csv)
  tmp = out.with_name(f".{out.name}.prepare-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  (tmp / "scratch").mkdir(parents=True)
  written, swapped = {}, []
  try:
    with zipfile.ZipFile(zip_path) as archive:
      members = _members(archive)
      missing = [f"{folder} of {sid}" for sid in table for folder in ("image", "left", "right")
                 if (folder, sid) not in members]
      if missing:
        raise errors.BadInputError(zip_path, f"lacks {len(missing)} file(s) the split names "
                                   f"(e.g. {', '.join(missing[:3])}); is it {ZIP_NAME}?")
      for sid in sorted(table):
        image = _decode(archive, members[("image", sid)], zip_path, tmp / "scratch",
                        raw.read_image)
        sides = {side: lungs.check_mask(
            _decode(archive, members[(side, sid)], zip_path, tmp / "scratch",
                    raw.read_mask_values), f"{zip_path}:{members[(side, sid)]}", image.shape)
                 for side in ("left", "right")}
        # The patient's left lung lies right in the image (larger x).
        if np.nonzero(sides["left"])[1].mean() < np.nonzero(sides["right"])[1].mean():
          sides = {"left": sides["right"], "right": sides["left"]}
          swapped.append(sid)
        arrays = {f"images/{sid}.png": lungs.resize_image(image, image_size)}
        for side, mask in sides.items():
          arrays[f"masks/{side}/{sid}.png"] = lungs.resize_mask(mask, image_size).astype(
              np.uint8) * 255
        for rel, array in arrays.items():
          (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
          (tmp / rel).write_bytes(_png(array))
          written[rel] = checkpoints.sha256_file(tmp / rel)
    (tmp / "scratch").rmdir()
    with open(tmp / "splits.csv", "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["id", "split", "finding"])
      writer.writerows([sid, split, finding] for sid, (split, finding) in sorted(table.items()))
    (tmp / "README.md").write_text(_README.format(size=image_size, n=len(table),
                                                  page=DOWNLOAD_PAGE))
    for rel in ("splits.csv", "README.md"):
      written[rel] = checkpoints.sha256_file(tmp / rel)
    manifest = {"source": {"file": zip_path.name, "sha256": digest}, "image_size": image_size,
                "subjects": len(table), "masks_swapped": swapped, "files": written}
    files.write_json(tmp / MANIFEST, manifest)
    if out.exists():
      out.rmdir()  # empty, checked above
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if swapped:
    logging.info("%d subject(s) had leftMask on the image's left side; stored as the patient's "
                 "right lung: %s", len(swapped), ", ".join(swapped[:5]))
  return manifest


_README = """# Montgomery County chest X-ray set, lungs ({size} x {size}), prepared by sampot-jax

{n} posterior-anterior chest radiographs with manual lung masks, from the NLM's original
download ({page}), made by `python main.py --config configs/prepare_montgomery.py`.

- `images/ID.png`: 8-bit grey, resized to {size} x {size} (aspect ratio not kept; antialiased).
- `masks/left/`, `masks/right/`: 0/255, the patient's left and right lung (left = the image's
  right side); a pixel is set when over half of its area is lung.
- `splits.csv`: id,split,finding, the project's fixed split.
- `prepared.json`: the source zip's sha256 and every file's sha256.

Cite Jaeger et al. 2014 (QIMS 4(6)) and Candemir et al. 2014 (IEEE TMI 33(2)). The NLM asks that
the set not be shared outside your research group: do not redistribute this folder.
"""
