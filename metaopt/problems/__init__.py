"""Problem families (optimizees), and a registry to build them by name."""

from typing import Any, Callable

from metaopt.problems.base import ProblemFamily
from metaopt.problems.mlp import MLPFamily, MLPTask, classification_metrics
from metaopt.problems.quadratic import QuadraticFamily, QuadraticTask


def _mlp(dataset: str = "mnist", data_dir: str | None = None, **kwargs) -> MLPFamily:
  from metaopt.data import load_dataset
  return MLPFamily.from_dataset(load_dataset(dataset, data_dir), **kwargs)


FAMILIES: dict[str, Callable[..., Any]] = {"quadratic": QuadraticFamily, "mlp": _mlp}


def make_family(name: str, **kwargs) -> ProblemFamily:
  """Build a problem family by name (``"quadratic"`` or ``"mlp"``) with its keyword arguments.

  Example:
    >>> fam = make_family("quadratic", dim=10)
  """
  if name not in FAMILIES:
    raise ValueError(f"unknown problem family {name!r}; expected one of {sorted(FAMILIES)}")
  return FAMILIES[name](**kwargs)


__all__ = ["FAMILIES", "MLPFamily", "MLPTask", "ProblemFamily", "QuadraticFamily", "QuadraticTask",
           "classification_metrics", "make_family"]
