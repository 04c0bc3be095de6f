"""The benchmarks: run one as `python benchmarks/NAME.py` or `python -m benchmarks.NAME` (see README.md here)."""
