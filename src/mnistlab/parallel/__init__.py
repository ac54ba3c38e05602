"""Parallel modes as strategies the one training loop is handed (DESIGN.md §4)."""

from mnistlab.parallel.base import LossFn, MakeOptimizer, Strategy

__all__ = ["LossFn", "MakeOptimizer", "Strategy"]
