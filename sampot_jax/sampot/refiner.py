"""SAMPOT on users' images of any sizes, with the models given: what the refine task and the
web page (sampot_jax/app) share, so that both give the same mask for the same image and prompt.

    refiner = Refiner(sam, scorer, config, batch_size)     # config: configs/refine.py's fields
    embeddings = refiner.embed(images)                     # once per image (the app keeps it)
    outs = refiner.refine_batch(items, images, embeddings) # one dict per image, masks at its size
    verdict = judge(config, outs[0])                       # the safeguards: kept prompt
    row = results_row(item, image, dim, outs[0], verdict, seconds)  # a results.csv row

An item is anything with `prompt` ((D,) original pixels) and `key` (its results key: the file's
name, '#slice' for a volume's slice); `results_row` also reads `name`, `slice`, `line` and `out`.
The random numbers of an image's search (its population and restarts) come from the run's seed
and what the image and its prompt are (rng_key), not from its name or batch: the same image and
box give the same mask wherever the file lives (a DICOM series or its NIfTI, refine or the web
page).

Prompts evolve in the model's input frame (tasks/refine.py's docstring says why), with steps
scaled to each image's longest side (step_scale).
"""
import functools
import time
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sampot_jax import errors
from sampot_jax.data import images as images_lib
from sampot_jax.sam import model
from sampot_jax.sam import predictor
from sampot_jax.sam import processing
from sampot_jax.sampot import evolve
from sampot_jax.sampot import metrics
from sampot_jax.sampot import safeguards
from sampot_jax.sampot import scorer as scorer_lib
from sampot_jax.storage import embedding_cache


def step_scale(size: tuple[int, int], img_size: int, reference_side: float) -> float:
  """An image's Adam step, restart jitter and smallest box side in the model's input pixels, as
  a multiple of the settings' (given for a `reference_side` image, scaled to each image's
  longest side; 0: pixels of every image as given)."""
  if reference_side and reference_side > 0:
    return img_size / float(reference_side)
  return img_size / float(max(size))


@functools.partial(jax.jit, static_argnames=("sam_config", "decode_fn"))
def _model_frame_logits(sam_params, embeddings, prompts, *, sam_config, decode_fn):
  """(B, g, g, C), (B, K, D) prompts in model pixels -> low-res logits (B, K, L, L), IoU (B, K)."""
  b, k, d = prompts.shape
  frame = model_frame(sam_config.img_size)
  low_res, iou = decode_fn(sam_params, jnp.repeat(embeddings, k, axis=0),
                           prompts.reshape(b * k, d), frame, sam_config)
  return (low_res[:, 0].reshape((b, k) + low_res.shape[-2:]), iou[:, 0].reshape(b, k))


@functools.partial(jax.jit, static_argnames=("sam_config", "score_fn", "slope", "iou_weight",
                                             "decode_fn"))
def _model_frame_score(sam_params, score_variables, embedding, image_small, prompt, *,
                       sam_config, score_fn, slope, iou_weight, decode_fn):
  """(1, g, g, C), (S, S), (D,) model pixels -> the score SAMPOT ranks the prompt by (its
  step 0: the regressor's, blended with SAM's IoU by iou_weight), as evolve computes it."""
  image_side = (predictor.image_side(sam_params, embedding, sam_config)
                if decode_fn is predictor.decode_prompts else None)
  regressed, iou = evolve.prompt_score(
      prompt, embedding[0], image_small, sam_params, score_variables, sam_config=sam_config,
      frame=model_frame(sam_config.img_size), score_fn=score_fn, slope=slope,
      decode_fn=decode_fn, image_side=None if image_side is None else jax.tree.map(
          lambda x: x[0], image_side))
  return scorer_lib.blend(regressed, iou, iou_weight)


def model_frame(img_size: int) -> predictor.ImageFrame:
  """The model's own input frame, shared by images of every size: prompts in its pixels, the
  whole padded square valid (the regressor sees the image padded to that square)."""
  return predictor.ImageFrame((int(img_size), int(img_size)), (int(img_size), int(img_size)))


@functools.partial(jax.jit, static_argnames=("proc", "frame", "img_size"))
def _to_original(low_res, proc, frame: predictor.ImageFrame, img_size: int):
  """(K, L, L) low-res logits -> (K, H, W) bool masks at the image's size (one small program
  per size: the evolution never sees the size)."""
  logits = proc.postprocess_masks(low_res, frame.input_size, frame.original_size, img_size)
  return logits > predictor.MASK_THRESHOLD


def rng_key(key: jax.Array, image_small: np.ndarray, prompt) -> jax.Array:
  """An image's search key: the run's key folded with a checksum of the image as the scorer sees
  it ((S, S) float32) and of its prompt ((D,) original pixels)."""
  digest = zlib.crc32(np.asarray(image_small, np.float32).tobytes())
  digest = zlib.crc32(np.asarray(prompt, np.float64).tobytes(), digest)
  return jax.random.fold_in(key, digest & 0x7FFFFFFF)


class Refiner:
  """The frozen models of a run; refines a batch of images of any sizes in one compiled call.

  sam: sam.frozen.Sam; scorer: sampot.scorer.Scorer; config: seed, evolve, safeguards,
  reference_side, batch_size (unless given) and embedding_cache_dir (optional) as in
  configs/refine.py.
  """

  def __init__(self, sam, scorer, config, batch_size: int | None = None):
    self.sam = sam
    self.scorer = scorer
    self.side = self.scorer.resolution
    self.img_size = int(self.sam.config.img_size)
    self.proc = processing.processing_for(self.sam.config)
    self.settings = evolve.settings_from_config(config.evolve)
    self.reference_side = float(config.reference_side)
    self.batch_size = int(config.batch_size if batch_size is None else batch_size)
    if self.batch_size < 1:
      raise errors.ConfigError(f"config.batch_size={self.batch_size}; it must be >= 1.")
    self.safeguards = config.safeguards
    self.key = jax.random.key(int(config.seed))
    cache_dir = config.get("embedding_cache_dir")
    self.cache = (embedding_cache.EmbeddingCache(cache_dir, self.sam.key, self.sam.config)
                  if cache_dir else None)
    self.compiled: set = set()  # image sizes whose final masks were compiled
    self.evolve_programs_before = evolve.compiled_programs()
    self.seconds_loading = 0.0  # the caller's: it loaded the models

  @property
  def evolve_compilations(self) -> int:
    """How often this run compiled the evolution (every image size shares one program)."""
    return evolve.compiled_programs() - self.evolve_programs_before

  def _pad(self, rows: list, stack=np.stack):
    """n rows -> batch_size rows (the last repeated), stacked: every call has one shape."""
    return stack(rows + [rows[-1]] * (self.batch_size - len(rows)))

  def encode(self, inputs: np.ndarray) -> jax.Array:
    """(n, S, S, 3) model inputs -> (batch_size, g, g, C) embeddings (padded)."""
    encode = lambda batch: model.encode_jit(self.sam.params, jnp.asarray(batch), self.sam.config)
    if self.cache is not None:
      embeddings, _ = self.cache.embeddings(list(inputs), encode, self.batch_size)
      return jnp.asarray(self._pad(list(embeddings)))
    return encode(self._pad(list(inputs)))

  def embed(self, images: list) -> jax.Array:
    """Up to batch_size images (data.images.Image, any sizes) -> (batch_size, g, g, C)."""
    s = self.img_size
    inputs = np.concatenate([self.proc.prepare_images(im.pixels[None], s)[0] for im in images])
    return jax.block_until_ready(self.encode(inputs))

  def _model_prompt(self, prompt, size: tuple[int, int]) -> np.ndarray:
    """(D,) original pixels -> (D,) float64 model pixels."""
    pairs = np.asarray(prompt, np.float64).reshape(-1, 2)
    return self.proc.apply_coords(pairs, size, self.img_size).reshape(-1)

  def refine_batch(self, items: list, images: list, embeddings: jax.Array | None = None
                   ) -> list[dict]:
    """Evolves the prompts of up to batch_size images (any sizes) in the model's input frame;
    returns one dict of host arrays per image, masks at each image's own size. embeddings:
    `embed(images)` when the caller keeps them (None: encoded here)."""
    n, s = len(items), self.img_size
    t0 = time.time()
    if embeddings is None:
      embeddings = self.embed(images)
    t_encode = time.time() - t0
    t0 = time.time()
    small = [images_lib.to_square(im.gray, self.side) for im in images]
    prompts, uppers, scales, keys = [], [], [], []
    for item, image, image_small in zip(items, images, small):
      prompts.append(self._model_prompt(item.prompt, image.size))
      uppers.append(self.proc.apply_coords(np.array([predictor.click_upper(image.size)]),
                                           image.size, s)[0])
      scales.append(step_scale(image.size, s, self.reference_side))
      keys.append(rng_key(self.key, image_small, item.prompt))
    batch = evolve.Batch(embeddings, model_frame(s), jnp.asarray(self._pad(small)),
                         self._pad(prompts).astype(np.float32), self._pad(uppers),
                         self._pad(scales))
    # masks=False: the two prompts are decoded once, below, as logits for each image's size.
    result = evolve.evolve_prompts(self.sam, self.scorer, batch, self.settings,
                                   rng=self._pad(keys, jnp.stack), masks=False)
    both = jnp.stack([result.initial_prompt, result.best_prompt], axis=1)
    low_res, ious = _model_frame_logits(self.sam.params, embeddings, both,
                                        sam_config=ml_collections.FrozenConfigDict(
                                            self.sam.config), decode_fn=self.sam.decode)
    low_res, ious = np.asarray(low_res), np.asarray(ious)
    both = np.asarray(both, np.float64)
    t_evolve = time.time() - t0
    outs = []
    for i, image in enumerate(images):
      frame = predictor.frame_for(image.size, s)
      self.compiled.add(image.size)
      masks = np.asarray(_to_original(jnp.asarray(low_res[i]), self.proc, frame, s))
      best = (both[i, 1].reshape(-1, 2) / self._unit(image.size)).reshape(-1)
      outs.append(dict(
          initial=np.asarray(items[i].prompt, np.float64), best=best,
          initial_score=float(result.initial_score[i]), best_score=float(result.best_score[i]),
          initial_mask=masks[0], best_mask=masks[1], initial_iou=float(ious[i, 0]),
          best_iou=float(ious[i, 1]), best_step=int(result.best_step[i]),
          best_start=int(result.best_start[i]),
          nan_step=int(np.asarray(result.nan_step)[i].min()),
          scores=np.asarray(result.scores[i]),  # (R, T): every start's score along its steps
          seconds={"encode": t_encode / n, "evolve": t_evolve / n}))
    return outs

  def _unit(self, size: tuple[int, int]) -> np.ndarray:
    """(2,) model pixels per image pixel along x and y (apply_coords' scale per axis)."""
    return self.proc.apply_coords(np.ones((1, 2)), size, self.img_size)[0].astype(np.float64)

  def preview(self, item, image, embeddings: jax.Array) -> dict:
    """One prompt, no evolution: its mask at the image's size (the program refine_batch decodes
    its final masks with, so it is refine's initial mask to the bit), SAM's IoU, and the score
    SAMPOT ranks it by (refine's initial_score, up to float rounding). batch_size must be 1."""
    s = self.img_size
    prompt = self._model_prompt(item.prompt, image.size).astype(np.float32)
    # The prompt twice: refine_batch's (1, 2, D) shape, so its compiled decode is reused.
    both = jnp.asarray(np.stack([prompt, prompt])[None])
    config = ml_collections.FrozenConfigDict(self.sam.config)
    low_res, ious = _model_frame_logits(self.sam.params, embeddings, both, sam_config=config,
                                        decode_fn=self.sam.decode)
    small = jnp.asarray(images_lib.to_square(image.gray, self.side))
    score = _model_frame_score(self.sam.params, self.scorer.variables, embeddings, small,
                               jnp.asarray(prompt), sam_config=config, score_fn=self.scorer.fn,
                               slope=self.settings.slope, iou_weight=self.settings.iou_weight,
                               decode_fn=self.sam.decode)
    frame = predictor.frame_for(image.size, s)
    self.compiled.add(image.size)
    masks = np.asarray(_to_original(low_res[0], self.proc, frame, s))
    return dict(prompt=np.asarray(item.prompt, np.float64), mask=masks[0],
                score=float(score), iou=float(np.asarray(ious)[0, 0]))


def judge(config, out: dict) -> dict:
  """The safeguards' verdict on one image: accepted, the rules that rejected, the kept prompt."""
  passed = safeguards.check(config.safeguards, np.array([out["initial_score"]]),
                            np.array([out["best_score"]]), out["initial_mask"][None],
                            out["best_mask"][None], out["best"][None],
                            np.array([out["initial_iou"]]), np.array([out["best_iou"]]))
  passed = {rule: bool(ok[0]) for rule, ok in passed.items()}
  accepted = all(passed.values())
  return dict(passed=passed, accepted=accepted,
              rejected_by=[rule for rule, ok in passed.items() if not ok],
              kept="evolved" if accepted else "initial")


def results_row(item, image: images_lib.Image, dim: int, out: dict, verdict: dict,
                seconds: float) -> dict:
  """refine's results.csv row of one image (item: name, slice, line, out; see the module
  docstring)."""
  fields = predictor.PROMPT_FIELDS[dim]
  h, w = image.size
  kept = out["best"] if verdict["accepted"] else out["initial"]
  row = {"file": item.name, "slice": "" if item.slice is None else item.slice,
         "line": item.line, "width": w, "height": h,
         "intensity": image.intensity, "kind": predictor.PROMPT_KINDS[dim]}
  for name, prompt in (("initial", out["initial"]), ("evolved", out["best"]), ("kept", kept)):
    row.update({f"{name}_{f}": round(float(v), 3) for f, v in zip(fields, prompt)})
  score_kept = out["best_score"] if verdict["accepted"] else out["initial_score"]
  row.update(score_initial=out["initial_score"], score_evolved=out["best_score"],
             score_kept=score_kept, score_gain=out["best_score"] - out["initial_score"],
             iou_initial=out["initial_iou"], iou_evolved=out["best_iou"],
             mask_overlap=float(metrics.dice(out["initial_mask"], out["best_mask"])),
             accepted=verdict["accepted"], kept=verdict["kept"],
             rejected_by=";".join(verdict["rejected_by"]))
  row.update({f"rule_{rule}": ok for rule, ok in verdict["passed"].items()})
  kept_mask = out["best_mask"] if verdict["accepted"] else out["initial_mask"]
  row.update(mask_pixels=int(kept_mask.sum()), best_step=out["best_step"],
             nan_step=out["nan_step"], seconds=round(seconds, 3),
             mask=f"masks/{item.out}.png", overlay=f"overlays/{item.out}.png")
  return row
