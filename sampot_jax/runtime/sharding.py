"""A batch of images sharded over a 1-D device mesh: one CPU, several GPUs, a TPU slice.

    mesh = batch_mesh()                        # every device (of every host)
    padded, n = pad_batch(batch, mesh.size)    # repeat the last row up to a multiple
    sharded = shard_batch(padded, mesh)        # axis 0 split over the 'batch' axis
    params = replicate(params, mesh)
    out = unpad(gather(jitted_fn(params, sharded)), n)

Jitted functions that map over the batch (evolve's vmap) then run each shard on
its own device: XLA propagates the input sharding through the program.

Multi-host: call `jax.distributed.initialize()` first (on every host, before any
other JAX call); `jax.devices()` then lists the devices of all hosts and the
mesh spans them. Every host must hold the same full batch (data loading is
deterministic, the batches are small): `shard_batch` builds the global array
from each host's addressable shards, and `gather` all-gathers the results so
that every host sees them (only process 0 should write files).
"""
import math

import jax
from jax.experimental import multihost_utils
import numpy as np

BATCH_AXIS = "batch"


def batch_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named 'batch' over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("batch_mesh got no devices; pass None to use jax.devices().")
  return jax.sharding.Mesh(np.asarray(devices), (BATCH_AXIS,))


def padded_size(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that holds n (at least one multiple)."""
  if n < 1 or multiple < 1:
    raise ValueError(f"padded_size needs n >= 1 and multiple >= 1; got {n}, {multiple}.")
  return max(1, math.ceil(n / multiple)) * multiple


def _batch_size(tree) -> int:
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(tree)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"every array of a batch needs the same leading (batch) axis; got sizes "
                     f"{sorted(sizes, key=str)}.")
  return sizes.pop()


def pad_batch(tree, multiple: int):
  """Pads axis 0 of every leaf to a multiple by repeating the last row.

  Repeating real data (not zeros) keeps the padding finite and well formed (a
  zero mask or image could make NaNs). Returns (padded tree, original size n).
  """
  n = _batch_size(tree)
  size = padded_size(n, multiple)
  if size == n:
    return tree, n
  pad = lambda x: np.concatenate([np.asarray(x), np.repeat(np.asarray(x)[-1:], size - n, 0)])
  return jax.tree.map(pad, tree), n


def unpad(tree, n: int):
  """The first n rows of every leaf (undoes pad_batch)."""
  return jax.tree.map(lambda x: x[:n], tree)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Axis 0 split over the mesh, other axes whole."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(BATCH_AXIS))


def shard_batch(tree, mesh: jax.sharding.Mesh):
  """Host arrays (same full batch on every host) -> global arrays split along axis 0.

  Axis 0 must divide by mesh.size: pad first (pad_batch).
  """
  n = _batch_size(tree)
  if n % mesh.size:
    raise ValueError(f"a batch of {n} does not split over {mesh.size} devices; pad it first "
                     f"with pad_batch(tree, {mesh.size}).")
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def like(x, ref):
  """A host array (the same on every host) split along axis 0 as `ref` (a global batch array)
  is; in one process, `x` as it is."""
  if jax.process_count() == 1:
    return x
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, ref.sharding, lambda index: x[index])


def replicate(tree, mesh: jax.sharding.Mesh):
  """A whole copy of every leaf on every device of the mesh (params)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def gather(tree):
  """Global (sharded) arrays -> host numpy arrays, complete on every host."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
