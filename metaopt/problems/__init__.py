"""Problem families (optimizees)."""

from metaopt.problems.base import ProblemFamily
from metaopt.problems.mlp import MLPFamily, MLPTask, classification_metrics
from metaopt.problems.quadratic import QuadraticFamily, QuadraticTask

__all__ = ["MLPFamily", "MLPTask", "ProblemFamily", "classification_metrics", "QuadraticFamily", "QuadraticTask"]
