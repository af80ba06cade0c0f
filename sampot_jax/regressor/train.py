"""The Dice regressor's training loop (tasks/train_regressor.py runs it with its inputs and
outputs):

  1. candidate masks with known Dice for train/val/test come in (`candidate_sets`);
  2. Adam at a constant learning rate, MSE, keeping the parameters with the
     lowest validation loss; an Orbax checkpoint every `checkpoint_every`
     epochs in `workdir/checkpoints` (a killed run resumes there and ends
     exactly where an uninterrupted run ends: the data order depends only on
     (seed, epoch)). `resume` keeps the settings beside the checkpoints and
     refuses a resume under other ones (a larger num_epochs is allowed), a
     crc32 index per step, and falls back to the newest readable step;
  3. `train` returns the state with the best variables; the task saves them
     (regressor.store) and evaluates them (regressor.evaluation).

The last partial training batch of an epoch is dropped (the shuffle changes
every epoch, so every candidate is still seen). Shapes stay fixed, so each
jitted step compiles once. Nothing imports this module but the task.
"""
from pathlib import Path
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from sampot_jax import errors
from sampot_jax.regressor import candidate_sets
from sampot_jax.regressor import evaluation
from sampot_jax.regressor import model as regressor
from sampot_jax.regressor import resume
from sampot_jax.regressor import shipped
from sampot_jax.regressor.candidate_sets import CandidateSet
from sampot_jax.runtime import settings
from sampot_jax.storage import files


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """Permutation of range(n) that depends only on (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def grouped_order(seed: int, epoch: int, image_index: np.ndarray, group: int) -> np.ndarray:
  """Candidate rows in runs of `group` from one image each (for the ranking loss): each image's
  candidates shuffled and cut into runs (the remainder sits this epoch out), the runs shuffled.
  Depends only on (seed, epoch)."""
  rng = np.random.default_rng([seed, epoch, 1])
  runs = []
  for i in np.unique(image_index):
    rows = rng.permutation(np.flatnonzero(image_index == i))
    runs += [rows[k:k + group] for k in range(0, len(rows) - group + 1, group)]
  if not runs:
    return np.zeros((0,), np.int64)
  return np.concatenate([runs[j] for j in rng.permutation(len(runs))])


def rank_loss(pred: jax.Array, dice: jax.Array, group: int, temperature: float,
              min_gap: float) -> jax.Array:
  """Mean softplus(-temperature (pred_i - pred_j)) over the pairs (i, j) of one run of `group`
  rows (a batch is runs of one image each) with dice_i - dice_j > min_gap; 0 without such pairs.
  pred, dice: (B,), B a multiple of group."""
  runs = jnp.arange(pred.shape[0]) // group
  better = (runs[:, None] == runs[None, :]) & (dice[:, None] - dice[None, :] > min_gap)
  losses = jax.nn.softplus(-temperature * (pred[:, None] - pred[None, :]))
  return jnp.sum(jnp.where(better, losses, 0.0)) / jnp.maximum(jnp.sum(better), 1)


def augment(rng: jax.Array, images: jax.Array, masks: jax.Array,
            max_shift: float, max_log_gamma: float
            ) -> tuple[jax.Array, jax.Array]:
  """Random jitter that leaves each candidate's Dice unchanged.

  Image and mask shift together by whole pixels (zero fill), so the candidate
  keeps its Dice against the equally shifted ground truth and stays binary;
  the image also gets a random gamma. No flips: which lung is the target
  depends on the side. (Scaling via jax.image.scale_and_translate cost as
  much as a training step on the CPU, so it is left out.)

  Args:
    rng: PRNG key.
    images, masks: (B, S, S) float32 in [0, 1].
    max_shift: shift bound per axis, a fraction of S.
    max_log_gamma: gamma drawn as exp(U(-max_log_gamma, max_log_gamma)).

  Returns:
    (images, masks), (B, S, S) float32 in [0, 1].
  """
  b, size = images.shape[0], images.shape[1]
  k_gamma, k_shift = jax.random.split(rng)
  gamma = jnp.exp(jax.random.uniform(k_gamma, (b, 1, 1), minval=-max_log_gamma,
                                     maxval=max_log_gamma))
  images = jnp.clip(images, 1e-6, 1.0) ** gamma
  pad = int(round(max_shift * size))
  if pad == 0:
    return images, masks
  shifts = jax.random.randint(k_shift, (b, 2), -pad, pad + 1)

  def shift(pair, d):
    padded = jnp.pad(pair, ((0, 0), (pad, pad), (pad, pad)))
    return jax.lax.dynamic_slice(padded, (0, pad - d[0], pad - d[1]),
                                 pair.shape)

  pairs = jax.vmap(shift)(jnp.stack([images, masks], axis=1), shifts)
  return pairs[:, 0], pairs[:, 1]


def make_train_step(model: regressor.DiceRegressor,
                    tx: optax.GradientTransformation,
                    augment_config: ml_collections.ConfigDict | None = None,
                    rank: settings.Rank | None = None):
  """Jitted step: (params, batch_stats, opt_state, images, masks, dice, rng)
  -> (params, batch_stats, opt_state, loss). `rng` drives `augment` when
  augment_config.enabled; with rank.weight > 0 the batch is runs of rank.group candidates of
  one image (grouped_order) and the loss adds rank.weight x rank_loss."""
  ranked = rank is not None and rank.weight > 0

  @jax.jit
  def train_step(params, batch_stats, opt_state, images, masks, dice, rng):
    if augment_config is not None and augment_config.enabled:
      images, masks = augment(rng, images, masks, augment_config.max_shift,
                              augment_config.max_log_gamma)

    def loss_fn(p):
      pred, updates = model.apply(
          {"params": p, "batch_stats": batch_stats}, images, masks,
          train=True, mutable=["batch_stats"])
      loss = jnp.mean((pred - dice) ** 2)
      if ranked:
        loss += rank.weight * rank_loss(pred, dice, rank.group, rank.temperature, rank.min_gap)
      return loss, updates["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  return train_step


def initial_variables(config, model) -> dict:
  """Random variables (config.seed), or a shipped regressor's with config.init_from: its card's
  model fields must be config.model's (else a ConfigError naming both)."""
  if not config.init_from:
    return regressor.init_variables(model, jax.random.key(config.seed))
  card = shipped.card(config.init_from)
  differ = {k: (v, card["model"].get(k)) for k, v in files.json_ready(config.model.to_dict()).items()
            if card["model"].get(k) != v}
  if differ:
    listed = ", ".join(f"model.{k}: {a!r} here, {b!r} in {config.init_from}"
                       for k, (a, b) in sorted(differ.items()))
    raise errors.ConfigError(f"config.init_from={config.init_from!r} is another model ({listed});"
                             f" set those --config.model fields to the shipped regressor's.")
  _, variables = shipped.read(config.init_from)
  return variables


def _initial_state(config, model, tx) -> dict:
  """The checkpointed training state at epoch 0 (all jax arrays)."""
  rng = jax.random.key(config.seed)
  variables = initial_variables(config, model)
  e = config.num_epochs
  state = {
      "params": variables["params"],
      "batch_stats": variables["batch_stats"],
      "opt_state": tx.init(variables["params"]),
      "best_params": variables["params"],
      "best_batch_stats": variables["batch_stats"],
      "epoch": jnp.asarray(0, jnp.int32),  # epochs completed
      "best_epoch": jnp.asarray(-1, jnp.int32),
      "best_val_loss": jnp.asarray(np.inf, jnp.float32),
      "rng": jax.random.key_data(rng),
      "train_loss": jnp.full((e,), np.nan, jnp.float32),
      "val_loss": jnp.full((e,), np.nan, jnp.float32),
      "seconds": jnp.full((e,), np.nan, jnp.float32),
  }
  return jax.tree.map(jnp.asarray, state)


# Settings that must be whole numbers of at least this much (config.<name>).
_AT_LEAST = {"batch_size": 1, "num_epochs": 1, "checkpoint_every": 1, "log_every": 1,
             "eval_batch_size": 1, "max_checkpoints": 1, "patience": 0,
             "max_images_per_split": 0, "train_images": 0}


def check_config(config: ml_collections.ConfigDict) -> None:
  """ValueError naming the setting for values a run cannot use (before any work)."""
  for name, low in _AT_LEAST.items():
    value = config[name] if name in config else None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise errors.ConfigError(f"config.{name}={value!r}; it must be a whole number >= {low} "
                       f"(--config.{name}=...).")
  rate = config.learning_rate if "learning_rate" in config else None
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < np.inf:
    raise errors.ConfigError(f"config.learning_rate={rate!r}; it must be a number > 0.")
  draw = config.get("train_images_draw", 0)
  if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
    raise errors.ConfigError(f"config.train_images_draw={draw!r}; it must be a whole number >= 0 "
                             "(0: the first train_images images).")
  rank = settings.typed(settings.Rank, config.get("rank", {}), "config.rank")
  if rank.weight > 0 and config.batch_size % rank.group:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} is not a multiple of "
                             f"config.rank.group={rank.group}: a ranked batch is whole runs of "
                             "one image's candidates.")


def _done(config, state) -> bool:
  epoch, best_epoch = int(state["epoch"]), int(state["best_epoch"])
  if epoch >= config.num_epochs:
    return True
  return (config.patience > 0 and not config.train_images
          and epoch - 1 - best_epoch >= config.patience)


def train(config: ml_collections.ConfigDict, workdir: Path,
          train_set: CandidateSet, val_set: CandidateSet | None, *,
          halt_after_epoch: int | None = None) -> dict:
  """Trains or resumes; returns the final checkpointed state (a dict).

  Args:
    config: the run's config.
    workdir: checkpoints go to workdir/checkpoints.
    train_set, val_set: candidate sets; val_set None (config.train_images > 0: a few labelled
      images, none held out): every epoch is "best", so the last one is kept.
    halt_after_epoch: stop as if killed once this many epochs are done,
      before any checkpoint of that epoch; for tests of resumption.

  Raises:
    ValueError: a setting a run cannot use (`check_config`), too few candidates.
    errors.ResumeError: workdir/checkpoints holds a run with other settings, or
      no step of it can be restored.
  """
  check_config(config)
  if len(train_set) < config.batch_size:
    raise errors.ConfigError(f"{len(train_set)} training candidates < batch_size "
                     f"{config.batch_size}; lower config.batch_size or use "
                     "more images.")
  directory = Path(workdir).resolve() / "checkpoints"
  resume.check_settings(directory, config)
  model = regressor.from_config(config.model)
  tx = optax.adam(config.learning_rate)
  state = _initial_state(config, model, tx)
  restored, latest = resume.restore_newest(directory, state)
  if restored is not None:
    state = restored
    logging.info("Resumed from %s at epoch %d", directory, latest)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints,
                                                      create=True))

  rank = settings.typed(settings.Rank, config.get("rank", {}), "config.rank")
  train_step = make_train_step(model, tx, config.augment, rank)
  # Like the data order, augmentation depends only on (seed, epoch, step).
  aug_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  predict = evaluation.make_predict(model, config.eval_batch_size)
  if val_set is not None:
    val_images, val_masks, val_dice = candidate_sets.batch(val_set, np.arange(len(val_set)))
  params, batch_stats = state["params"], state["batch_stats"]
  opt_state = state["opt_state"]
  while not _done(config, state):
    epoch = int(state["epoch"])
    t0 = time.time()
    if rank.weight > 0:
      order = grouped_order(config.seed, epoch, train_set.image_index, rank.group)
    else:
      order = epoch_order(config.seed, epoch, len(train_set))
    n_batches = len(order) // config.batch_size
    if n_batches == 0:
      raise errors.ConfigError(f"no batch of {config.batch_size} candidates in runs of "
                               f"config.rank.group={rank.group} per image; lower either.")
    losses = []
    for b in range(n_batches):
      idx = order[b * config.batch_size:(b + 1) * config.batch_size]
      images, masks, dice = candidate_sets.batch(train_set, idx)
      step_key = jax.random.fold_in(jax.random.fold_in(aug_key, epoch), b)
      params, batch_stats, opt_state, loss = train_step(
          params, batch_stats, opt_state, images, masks, dice, step_key)
      losses.append(loss)
    train_loss = float(np.mean(jax.device_get(losses)))
    variables = {"params": params, "batch_stats": batch_stats}
    if val_set is None:
      val_loss = float("nan")  # nothing held out
    else:
      val_pred = predict(variables, val_images, val_masks)
      val_loss = float(np.mean((val_pred - val_dice) ** 2))
    seconds = time.time() - t0
    state = dict(state, params=params, batch_stats=batch_stats,
                 opt_state=opt_state, epoch=jnp.asarray(epoch + 1, jnp.int32),
                 train_loss=state["train_loss"].at[epoch].set(train_loss),
                 val_loss=state["val_loss"].at[epoch].set(val_loss),
                 seconds=state["seconds"].at[epoch].set(seconds))
    if val_set is None or val_loss < float(state["best_val_loss"]):  # None: the last is kept
      state.update(best_params=params, best_batch_stats=batch_stats,
                   best_epoch=jnp.asarray(epoch, jnp.int32),
                   best_val_loss=jnp.asarray(val_loss, jnp.float32))
    if (epoch + 1) % config.log_every == 0 or epoch == 0 or _done(
        config, state):
      logging.info("epoch %d/%d  train_loss %.5f  val_loss %.5f  best %.5f "
                   "(epoch %d)  %.1f s", epoch + 1, config.num_epochs,
                   train_loss, val_loss, float(state["best_val_loss"]),
                   int(state["best_epoch"]) + 1, seconds)
    if halt_after_epoch is not None and epoch + 1 >= halt_after_epoch:
      break  # As if killed: epochs since the last checkpoint are lost.
    if (epoch + 1) % config.checkpoint_every == 0 or _done(config, state):
      resume.save_step(manager, epoch + 1, state)
  manager.wait_until_finished()
  manager.close()
  return state
