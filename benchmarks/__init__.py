"""Benchmarks: the training step's speed against transformers with hooks (`python -m benchmarks.bench`) and
train.py's peak memory on a large task (`python -m benchmarks.memory`)."""
