"""Benchmarks: run as scripts or as ``python -m bench.<name>``; they print ratios measured in one run."""
