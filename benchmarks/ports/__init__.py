"""The seed's two programs written in each framework, for ``benchmarks/frameworks.py``."""
