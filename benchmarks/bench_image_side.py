"""A/B of the mask decoder's image side computed once per image (predictor.image_side) against
computing it at every step, in `evolve.evolve_prompts` on vit_b (random weights and inputs).

    python -m benchmarks.bench_image_side --batches 1,8 --steps 20

`evolve_prompts` precomputes the image side only for `predictor.decode_prompts` itself; a
wrapper around it is another decode_fn, so it recomputes the projections at every step. Prints
the best of `--rounds` per image-step for each, rounds interleaved.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import train_regressor
from sampot_jax.regressor import model as regressor
from sampot_jax.sam import frozen
from sampot_jax.sam import model as sam_model
from sampot_jax.sam import predictor
from sampot_jax.sampot import evolve
from sampot_jax.sampot.scorer import Scorer


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", default="1,8")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args(argv)
  config = sam_model.sam_config("vit_b")
  params = frozen.random_sam_params(config, seed=0)
  model = regressor.from_config(train_regressor.get_config().model.to_dict())
  variables = regressor.init_variables(model, jax.random.key(0))
  scorer = Scorer(regressor.make_scorer(model), variables, model.resolution, model)
  frame = predictor.frame_for((1024, 1024), 1024)
  settings = evolve.Settings(num_steps=args.steps, learning_rate=10.0, slope=5.0)
  decoders = {"image side once per image": predictor.decode_prompts,
              "image side at every step": lambda *a, **k: predictor.decode_prompts(*a, **k)}
  rng = np.random.default_rng(0)
  for b in map(int, args.batches.split(",")):
    emb = jnp.asarray(rng.standard_normal((b, 64, 64, 256)), jnp.float32)
    small = jnp.asarray(rng.uniform(0, 1, (b, 256, 256)), jnp.float32)
    clicks = jnp.asarray(rng.uniform(300, 700, (b, 2)), jnp.float32)

    def run(decode_fn):
      return jax.block_until_ready(evolve.evolve_prompts(
          frozen.Sam(params, config, decode=decode_fn), scorer,
          evolve.Batch(emb, frame, small, clicks), settings).best_score)

    for fn in decoders.values():
      run(fn)  # compile
    times = {name: [] for name in decoders}
    for _ in range(args.rounds):
      for name, fn in decoders.items():
        start = time.perf_counter()
        run(fn)
        times[name].append((time.perf_counter() - start) / (b * (args.steps + 1)))
    print(f"batch {b}: " + "; ".join(f"{name} {1000 * min(t):.1f} ms per image-step"
                                     for name, t in times.items()), flush=True)


if __name__ == "__main__":
  main()
