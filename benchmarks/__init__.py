"""ObjectFS side-by-side benchmarks (see README.md); run with python benchmarks/run.py."""
