"""Evaluation: the benchmark metrics (one implementation for rewards and evaluation) and official-layout scoring."""
