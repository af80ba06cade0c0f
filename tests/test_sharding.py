"""Sharded evaluation on 4 simulated CPU devices equals one device; padding round-trips.

XLA_FLAGS must be set before JAX starts, so the multi-device part runs in a subprocess.
"""
import os
from pathlib import Path
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sampot_jax.runtime import sharding

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sampot_jax.sampot import baselines
    from sampot_jax.sampot import evolve
    from sampot_jax.runtime import sharding
    from tests import helpers as te

    assert jax.device_count() == 4, jax.devices()
    n = 5  # does not divide by 4: padded to 8, unpadded back to 5
    starts = np.array([[20, 28], [33, 22], [25, 25], [22, 30], [30, 26]], np.float32)
    targets = np.concatenate([np.asarray(te.disk_mask(c)) for c in
                              [(30, 20), (28, 30), (20, 20), (26, 26), (32, 24)]])
    host = dict(emb=np.zeros((n, 1, 1, 1), np.float32), small=targets, clicks=starts)
    settings = evolve.Settings(num_steps=6, learning_rate=1.0, num_starts=2, restart_jitter=2.0)
    key = jax.random.key(0)

    def run(batch):
      work = evolve.Batch(batch["emb"], te.DISK_FRAME, batch["small"], batch["clicks"])
      res = evolve.evolve_prompts(te.disk_sam(), te.target_scorer(te.dice_with_image), work,
                                  settings, rng=key)
      mask, iou, which = baselines.multimask_choice(te.disk_sam(), batch["emb"], te.DISK_FRAME,
                                                    batch["clicks"])
      return res, dict(mask=mask, iou=iou, which=which)

    mesh = sharding.batch_mesh()
    try:
      sharding.shard_batch(host, mesh)
      raise AssertionError("an unpadded batch of 5 was sharded over 4 devices")
    except ValueError as e:
      assert "pad it first" in str(e), e
    padded, m = sharding.pad_batch(host, mesh.size)
    assert m == n and padded["clicks"].shape[0] == 8
    sharded = sharding.shard_batch(padded, mesh)
    assert len(sharded["clicks"].sharding.device_set) == 4
    res, mm = run(sharded)
    # The work really is split: every output's batch axis lies on 4 devices.
    assert len(res.prompts.sharding.device_set) == 4, res.prompts.sharding
    assert res.prompts.addressable_shards[0].data.shape[0] == 2
    got = sharding.unpad(sharding.gather((res, mm)), n)

    one = sharding.batch_mesh(jax.devices()[:1])
    single = sharding.shard_batch(sharding.pad_batch(host, 8)[0], one)
    want = sharding.unpad(sharding.gather(run(single)), n)
    # The restarts' noise is drawn for the padded batch of 8 in both runs.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert a.shape == b.shape and a.shape[0] == n, (a.shape, b.shape)
      np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                 rtol=1e-5, atol=1e-5)
    assert got[0].best_mask.shape == (n, 48, 48)
    print("OK", float(np.asarray(got[0].best_score).mean()))
""")


def test_sharded_equals_single_device_with_padding():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.startswith("OK")


def test_pad_and_unpad_round_trip():
  tree = {"a": np.arange(5), "b": np.arange(10.0).reshape(5, 2)}
  padded, n = sharding.pad_batch(tree, 4)
  assert n == 5
  np.testing.assert_array_equal(padded["a"], [0, 1, 2, 3, 4, 4, 4, 4])  # last row repeated
  np.testing.assert_array_equal(padded["b"][5:], [[8.0, 9.0]] * 3)
  back = sharding.unpad(padded, n)
  np.testing.assert_array_equal(back["a"], tree["a"])
  np.testing.assert_array_equal(back["b"], tree["b"])
  same, n = sharding.pad_batch(tree, 5)
  assert n == 5 and same["a"].shape == (5,)
  assert sharding.padded_size(1, 4) == 4 and sharding.padded_size(8, 4) == 8


def test_bad_batches_are_refused():
  with pytest.raises(ValueError, match="same leading"):
    sharding.pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 2)
  with pytest.raises(ValueError, match="no devices"):
    sharding.batch_mesh([])
