"""Benchmarks: run each as `python -m benchmarks.<name>` from the repo root; results land in benchmarks/results/."""
