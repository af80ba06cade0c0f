"""Benchmarks: JAX beside the official PyTorch SAM (python -m benchmarks.bench_sam --help)."""
