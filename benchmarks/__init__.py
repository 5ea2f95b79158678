"""Benchmarks: one command; the gateway side by side against a reference; prints ratios.

`python -m benchmarks` (or `make bench`) runs every case; `--quick` a one-minute smoke run.
Results go to `benchmarks/results/latest.json` and `latest.md`.
"""
