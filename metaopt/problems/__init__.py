"""Problem families (optimizees), and a registry to build them by name."""

from collections.abc import Callable
from typing import Any

from metaopt.problems.augment import AugmentedFamily, AugmentedTask
from metaopt.problems.autoencoder import AutoencoderFamily, AutoencoderTask
from metaopt.problems.base import ProblemFamily
from metaopt.problems.charlm import CharLMFamily, CharLMTask
from metaopt.problems.classification import classification_metrics
from metaopt.problems.conv import CONV_GROUPS, ConvFamily, ConvTask, select_classes
from metaopt.problems.logistic import LogisticRegressionFamily, LogisticTask
from metaopt.problems.mlp import MLPFamily, MLPTask
from metaopt.problems.quadratic import QuadraticFamily, QuadraticTask
from metaopt.problems.rosenbrock import RosenbrockFamily, RosenbrockTask
from metaopt.problems.suite import (
  HELD_OUT_DATA,
  HELD_OUT_TYPE,
  META_TRAIN,
  Suite,
  SuiteTask,
  make_suite,
  normalized_log_loss,
  suite_specs,
)


def _mlp(dataset: str = "mnist", data_dir: str | None = None, **kwargs) -> MLPFamily:
  from metaopt.data import load_dataset
  return MLPFamily.from_dataset(load_dataset(dataset, data_dir), **kwargs)


def _conv(dataset: str = "cifar10", data_dir: str | None = None, **kwargs) -> ConvFamily:
  from metaopt.data import load_dataset
  ds = load_dataset(dataset, data_dir)
  return ConvFamily.from_arrays(ds.train_images, ds.train_labels, **kwargs)


FAMILIES: dict[str, Callable[..., Any]] = {"quadratic": QuadraticFamily, "mlp": _mlp, "conv": _conv}


def make_family(name: str, **kwargs) -> ProblemFamily:
  """Build a problem family by name (``"quadratic"``, ``"mlp"`` or ``"conv"``) with its keyword
  arguments (the task suite's families: :func:`make_suite`).

  Example:
    >>> fam = make_family("quadratic", dim=10)
  """
  if name not in FAMILIES:
    raise ValueError(f"unknown problem family {name!r}; expected one of {sorted(FAMILIES)}")
  return FAMILIES[name](**kwargs)


__all__ = ["AugmentedFamily", "AugmentedTask", "AutoencoderFamily", "AutoencoderTask",
           "CONV_GROUPS", "CharLMFamily", "CharLMTask", "ConvFamily", "ConvTask", "FAMILIES",
           "HELD_OUT_DATA", "HELD_OUT_TYPE", "LogisticRegressionFamily", "LogisticTask",
           "META_TRAIN", "MLPFamily", "MLPTask", "ProblemFamily", "QuadraticFamily",
           "QuadraticTask", "RosenbrockFamily", "RosenbrockTask", "Suite", "SuiteTask",
           "classification_metrics", "make_family", "make_suite", "normalized_log_loss",
           "select_classes", "suite_specs"]
