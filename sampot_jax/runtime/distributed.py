"""One run over several processes (hosts, or processes on one machine) under jax.distributed.

    index, count = distributed.start(config.distributed)  # before any other JAX call
    mine = distributed.share(items, index, count)         # every count-th item, from index
    distributed.barrier("refined")                        # every process gets here first

Each process works on its share of the inputs with its own devices and writes its outputs
into the shared workdir; process 0 then merges (tasks/refine.py). `jax.distributed` is the
same engine that runs multi-host GPU and TPU jobs: on a TPU pod or under SLURM,
`config.distributed.auto=True` finds the cluster itself; elsewhere give every process the
coordinator (process 0's host:port), the number of processes and its own number. The workdir
must be one folder all processes see (a shared file system across hosts).
"""
import jax

from sampot_jax.runtime import settings


def start(block) -> tuple[int, int]:
  """Joins the run `block` (config.distributed) describes; returns (process index, count)."""
  found = settings.typed(settings.Distributed, block, "config.distributed")
  if found.auto:
    jax.distributed.initialize()
  elif found.num_processes > 1:
    # The barrier is a collective; CPU processes need a collectives backend for it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=found.coordinator,
                               num_processes=found.num_processes,
                               process_id=found.process_id)
  return jax.process_index(), jax.process_count()


def share(items: list, index: int, count: int) -> list:
  """Process `index`'s share of `items`: every count-th, from its own index (order kept)."""
  return list(items)[index::count]


def barrier(name: str) -> None:
  """Waits until every process of the run reaches the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
