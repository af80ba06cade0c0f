"""The Montgomery set from the NLM's download to the folder the evaluation reads.

  python main.py --config configs/prepare_montgomery.py \
      --config.zip=~/Downloads/NLM-MontgomeryCXRSet.zip --workdir data/montgomery

Download the zip from the NLM (sampot_jax.data.prepare.DOWNLOAD_PAGE); WORKDIR becomes
images/, masks/left/, masks/right/, splits.csv (the project's split), README.md and
prepared.json (sha256 of every file); then pass --config.data.dir=data/montgomery.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.task = "prepare"
  config.zip = ""           # NLM-MontgomeryCXRSet.zip
  config.image_size = 512   # the side of the prepared squares (the team copy's)
  # The NLM release's sha256 (sampot_jax.data.prepare.ZIP_SHA256); '' accepts any zip.
  config.zip_sha256 = ml_collections.config_dict.placeholder(str)
  return config
