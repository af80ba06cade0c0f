"""python -m sampot_jax.runtime: the XLA:CPU choice for this CPU (runtime.cpu.main)."""
from sampot_jax.runtime import cpu

cpu.main()
