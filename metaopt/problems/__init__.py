"""Problem families (optimizees)."""

from metaopt.problems.base import ProblemFamily
from metaopt.problems.quadratic import QuadraticFamily, QuadraticTask

__all__ = ["ProblemFamily", "QuadraticFamily", "QuadraticTask"]
