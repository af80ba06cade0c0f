#!/usr/bin/env bash
# Both benchmarks on one GPU (the H200 of the device tool), in one go: at most 9 minutes.
#
# From a session that has the device tool (see docs/benchmarks.md, "H200"):
#   here, once:  .venv/bin/python -m pip download --no-deps --only-binary=:all: \
#                  -d benchmarks/wheels segment-anything==1.0 ml-collections==1.1.0
#                echo /benchmarks/wheels/ >> .git/info/exclude
#   device run:  command "bash benchmarks/run_gpu.sh", carry ["benchmarks/wheels"], timeout_s 540
# Results: $OUT/sam_gpu.json, $OUT/sampot_gpu.json, $OUT/gpu_log.txt (or benchmarks/results/ when
# OUT is unset). Each JSON is rewritten after every figure, so a run cut short keeps its figures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PY:-python3}
LOG="$OUT/gpu_log.txt"

# The machine's image has torch, jax[cuda], flax, optax, orbax; the two pure-Python packages it
# lacks travel as wheels.
if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site benchmarks/wheels/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX grows its pool as needed instead of taking 75 % of the GPU up front: PyTorch runs in the
# same process, and JAX's peak_bytes_in_use then means what it says.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import jax, torch, flax; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('flax', flax.__version__)"
} 2>&1 | tee "$LOG"

# Encoder float32 (strict on both) and bfloat16 at 1/8/32, decode at 1/64: ~3 min.
timeout 230 "$PY" -m benchmarks.bench_sam --out "$OUT/sam_gpu.json" \
  --batches 1,8,32 --dtypes float32,bfloat16 --decode-batches 1,64 \
  --repeats 10 --budget-s 8 2>&1 | tee -a "$LOG"

# SAMPOT: one step, 100 steps at 1/8/64, end to end with the bf16 encoder figures above: ~3 min.
timeout 200 "$PY" -m benchmarks.bench_sampot --out "$OUT/sampot_gpu.json" \
  --batches 1,8,64 --steps 100 --repeats 5 --budget-s 10 --encoder-dtype bfloat16 \
  --encoder-from "$OUT/sam_gpu.json" 2>&1 | tee -a "$LOG"

# The same steps with TF32 matmuls on both sides, 64 images: the 0.1 ms per image-step target is
# 67 TFLOP/s, the H200's whole non-tensor-core float32 rate (docs/benchmarks.md, "H200").
timeout 100 "$PY" -m benchmarks.bench_sampot --out "$OUT/sampot_gpu_tf32.json" \
  --batches 64 --steps 100 --repeats 3 --budget-s 10 --precision tf32 --skip-end-to-end \
  2>&1 | tee -a "$LOG"

nvidia-smi --query-gpu=memory.used,temperature.gpu,clocks.sm --format=csv 2>&1 | tee -a "$LOG"
