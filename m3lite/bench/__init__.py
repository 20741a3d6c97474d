"""Benchmarks, run side by side in one process: `python -m m3lite.bench cpu`."""
