"""sampot-jax: SAMPOT prompt evolution for the Segment Anything Model, in JAX/Flax."""

__version__ = "0.1.0"
