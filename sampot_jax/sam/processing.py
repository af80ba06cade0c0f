"""Which pre/post-processing a model variant uses, picked explicitly from its config.

    proc = processing_for(config)     # config.preprocess if set, else by config.variant
    pixels, input_size, original_size = proc.prepare_images(images, config.img_size)
    boxes_in_model_frame = proc.apply_boxes(boxes, original_size, config.img_size)
    masks = proc.postprocess_masks(low_res, input_size, original_size, config.img_size)

"sam" is the official SamPredictor's (transforms.py: Pillow resize to 1024, mean/std, logits
upsampled to 1024 then cropped); MobileSAM uses it too. "lite_medsam" is LiteMedSAM's official
inference script's (lite_medsam_transforms.py: OpenCV INTER_AREA to 256, min-max, logits cropped
at 256). Every function takes the same arguments in both, so callers do not branch.
"""
import dataclasses
from typing import Callable

from sampot_jax import errors
from sampot_jax.sam import lite_medsam_transforms
from sampot_jax.sam import transforms


@dataclasses.dataclass(frozen=True)
class Processing:
  """One variant's image preparation, prompt mapping and mask post-processing."""
  name: str
  prepare_images: Callable  # (images, img_size) -> (pixels (B,S,S,3), input_size, original_size)
  apply_coords: Callable  # (coords (..., 2), original_size, img_size) -> model frame
  apply_boxes: Callable  # (boxes (..., 4), original_size, img_size) -> model frame
  postprocess_masks: Callable  # (low_res, input_size, original_size, img_size) -> (..., H, W)


PROCESSINGS = {
    "sam": Processing("sam", transforms.prepare_images, transforms.apply_coords,
                      transforms.apply_boxes, transforms.postprocess_masks),
    "lite_medsam": Processing("lite_medsam", lite_medsam_transforms.prepare_images,
                              lite_medsam_transforms.apply_coords,
                              lite_medsam_transforms.apply_boxes,
                              lite_medsam_transforms.postprocess_masks),
}

# The processing each known variant was trained with.
VARIANT_PROCESSING = {"vit_b": "sam", "vit_l": "sam", "vit_h": "sam", "mobile_sam": "sam",
                      "lite_medsam": "lite_medsam"}


def processing_for(config) -> Processing:
  """`config.preprocess` ("sam" | "lite_medsam") when the config sets it, else the processing of
  `config.variant`; anything else is an error, never a silent default."""
  name = config.get("preprocess", None) if hasattr(config, "get") else None
  if name is None:
    variant = config.get("variant", None) if hasattr(config, "get") else None
    if variant not in VARIANT_PROCESSING:
      raise errors.ConfigError(f"No pre/post-processing known for variant {variant!r}; set "
                       f"config.preprocess to one of {sorted(PROCESSINGS)} or use a variant of "
                       f"{sorted(VARIANT_PROCESSING)}.")
    name = VARIANT_PROCESSING[variant]
  if name not in PROCESSINGS:
    raise errors.ConfigError(f"config.preprocess={name!r} is not one of {sorted(PROCESSINGS)}.")
  return PROCESSINGS[name]
