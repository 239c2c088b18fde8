"""The configuration of an experiment: its problems, variants, rules and baselines."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from metaopt.baselines import BASELINES, DEFAULT_GRID
from metaopt.config import MetaTrainConfig
from metaopt.estimators import MetaGradientEstimator
from metaopt.networks import RuleConfig
from metaopt.problems.base import ProblemFamily

# Seeds of the problem sets (meta-training draws from its own seed).
TUNE_SET, TEST_SET = 1, 2

# (family, test data, final params, final model state of one run) -> {metric name: scalar},
# e.g. test accuracy.
TestMetrics = Callable[[ProblemFamily, Any, Any, Any], dict]


# (rule config, meta-training config) -> the meta-gradient estimator of that rule.
Estimating = Callable[[RuleConfig, MetaTrainConfig], MetaGradientEstimator]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One evaluation setting: a problem family and a horizon.

  Attributes:
    name: the variant's key in ``summary.json``.
    family: the problems of this variant's test runs (the LSTM is not retrained on them).
    steps: the horizon of its test runs.
    retune: also report the baselines re-tuned on this variant, as ``<name>_retuned``.
    tune_family: where re-tuning runs draw their problems (default ``family``), e.g.
      the training images when ``family`` holds out images for testing.
    test_data: this variant's ``test_data`` for ``test_metrics`` (default the experiment's),
      e.g. the test images of a label subset.
    reuse_tuned: also evaluate the baselines at the rates tuned on the experiment's
      family. With ``retune=True, reuse_tuned=False`` only the baselines re-tuned
      on this variant are evaluated, under their plain names.
    info: more JSON fields of this variant's entry in ``summary.json`` (e.g. its split).
    tune_near: the name of an earlier re-tuned variant: re-tuning here starts from a
      three-point half-decade grid around each rate (and rule multiplier) tuned there,
      extended past an edge as usual, instead of the whole grid (e.g. a 10x horizon
      searched around the 1x rates).
    baselines: the baselines evaluated on this variant (default: the experiment's).
    num_tune_problems: validation runs of this variant's re-tuning (default: the
      experiment's).
  """

  name: str
  family: ProblemFamily
  steps: int
  retune: bool = False
  tune_family: ProblemFamily | None = None
  test_data: Any = None
  reuse_tuned: bool = True
  info: dict = dataclasses.field(default_factory=dict)
  tune_near: str | None = None
  baselines: tuple[str, ...] | None = None
  num_tune_problems: int | None = None


@dataclasses.dataclass(frozen=True)
class ExtraRule:
  """Another learned rule meta-trained and evaluated in the same experiment.

  E.g. the CIFAR experiment's single shared LSTM (``lstm_shared``) next to the
  two-LSTM rule, or ``lstm_sub`` meta-trained on other classes for a transfer test.

  Attributes:
    name: its optimizer name in ``summary.json`` (and ``<name>.msgpack``).
    family: its meta-training family.
    lstm: its network configuration.
    train: its meta-training settings.
    variants: names of the variants it is evaluated on (None: all).
    pretrained: evaluate this already trained rule instead of meta-training one: a
      shipped name (:func:`metaopt.checkpoint.list_pretrained`) or a ``.msgpack`` path,
      which must have been made for ``lstm``.
    valid_family: where its validation problems come from (default ``family``).
    optional: run only when named in ``--rules`` / ``RULES`` (e.g. a costly reference
      rule kept out of the default run's time budget).
    estimator: ``(rule config, meta-training config) -> estimator`` for :func:`meta_train`
      (None: truncated backprop), e.g. ``lambda c, t: PES(c, t.objective, ...)``.
  """

  name: str
  family: ProblemFamily | None
  lstm: RuleConfig
  train: MetaTrainConfig
  variants: tuple[str, ...] | None = None
  pretrained: str | None = None
  valid_family: ProblemFamily | None = None
  optional: bool = False
  estimator: Estimating | None = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """An experiment: meta-train on ``family``, evaluate on each variant.

  Attributes:
    name: experiment name (used in ``summary.json``).
    family: the meta-training family; the baselines are tuned on it too.
    lstm: the learned rule's network configuration.
    train: meta-training settings.
    eval_steps: horizon of the baselines' tuning runs and of the default variant.
    variants: evaluation settings (default: one variant ``base`` = ``family``, ``eval_steps``).
    num_test_problems: held-out test runs per variant (fresh tasks and run keys).
    num_tune_problems: validation runs for the baselines' learning-rate search.
    baselines: names from :data:`metaopt.baselines.BASELINES`.
    lr_grid: the initial log-spaced learning-rate grid.
    test_metrics: optional metrics of each run's final parameters (e.g. test accuracy),
      ``test_metrics(family, test_data, params, model_state) -> {name: scalar}``.
    test_data: a pytree of arrays handed to ``test_metrics`` (e.g. the test images).
    seed: seeds the tuning and test sets.
    extra_rules: more learned rules to meta-train and evaluate (:class:`ExtraRule`).
    rule_name: the main rule's name in ``summary.json`` (and ``<rule_name>.msgpack``).
    train_family: the main rule's meta-training problems, if not ``family`` (e.g. an
      :class:`metaopt.problems.AugmentedFamily` of it); validation uses ``family``.
    info: more JSON fields for ``summary.json`` (e.g. which feature network was used).
    estimator: the main rule's meta-gradient estimator factory (see :class:`ExtraRule`).
    tune_rule_multiplier: also evaluate each learned rule with its
      ``learning_rate_multiplier`` tuned per variant on the grid, as ``<name>_tuned``.
    multiplier_grid: the initial grid of that multiplier (default ``lr_grid``).
  """

  name: str
  family: ProblemFamily
  lstm: RuleConfig
  train: MetaTrainConfig
  eval_steps: int = 100
  variants: Sequence[Variant] | None = None
  num_test_problems: int = 128
  num_tune_problems: int = 128
  baselines: Sequence[str] = tuple(BASELINES)
  lr_grid: Sequence[float] = DEFAULT_GRID
  test_metrics: TestMetrics | None = None
  test_data: Any = None
  seed: int = 0
  extra_rules: Sequence[ExtraRule] = ()
  rule_name: str = "lstm"
  train_family: ProblemFamily | None = None
  info: dict = dataclasses.field(default_factory=dict)
  estimator: Estimating | None = None
  tune_rule_multiplier: bool = False
  multiplier_grid: Sequence[float] | None = None

  def __post_init__(self):
    unknown = [b for b in self.baselines if b not in BASELINES]
    if unknown:
      raise ValueError(f"ExperimentConfig.baselines: unknown {unknown}; allowed "
                       f"{sorted(BASELINES)}")
    grid = [float(r) for r in self.lr_grid]
    if len(grid) < 3 or min(grid) <= 0:
      raise ValueError(f"ExperimentConfig.lr_grid must hold at least 3 positive learning rates, "
                       f"got {list(self.lr_grid)}")
    for name in ("eval_steps", "num_test_problems", "num_tune_problems"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"ExperimentConfig.{name} must be a positive integer, got "
                         f"{getattr(self, name)!r}")
    for v in self.all_variants():
      if int(v.steps) <= 0:
        raise ValueError(f"variant {v.name!r}: steps must be a positive integer, got {v.steps!r}")
      if not (v.reuse_tuned or v.retune):
        raise ValueError(f"variant {v.name!r}: reuse_tuned=False needs retune=True (else no "
                         "baseline is evaluated)")
      _check_variant_tuning(self, v)
    names = [v.name for v in self.all_variants()]
    if len(set(names)) != len(names):
      raise ValueError(f"ExperimentConfig.variants: duplicate names in {names}")
    rules = [self.rule_name] + [r.name for r in self.extra_rules]
    if len(set(rules)) != len(rules) or set(rules) & set(BASELINES):
      raise ValueError(f"ExperimentConfig.extra_rules: names must be distinct and differ from "
                       f"{self.rule_name!r} and the baselines, got {rules[1:]}")
    for r in self.extra_rules:
      unknown = sorted(set(r.variants or ()) - set(names))
      if unknown:
        raise ValueError(f"ExtraRule {r.name!r}: unknown variants {unknown}; variants are {names}")

  def all_variants(self) -> tuple[Variant, ...]:
    """The variants, or the one default variant ``base``."""
    if self.variants:
      return tuple(self.variants)
    return (Variant("base", self.family, self.eval_steps),)


def _check_variant_tuning(cfg: ExperimentConfig, v: Variant) -> None:
  earlier = {}
  for u in cfg.all_variants():
    if u.name == v.name:
      break
    earlier[u.name] = u
  unknown = sorted(set(v.baselines or ()) - set(cfg.baselines))
  if unknown:
    raise ValueError(f"variant {v.name!r}: baselines {unknown} are not among the experiment's "
                     f"{list(cfg.baselines)}")
  if v.num_tune_problems is not None and int(v.num_tune_problems) <= 0:
    raise ValueError(f"variant {v.name!r}: num_tune_problems must be a positive integer, got "
                     f"{v.num_tune_problems!r}")
  if v.tune_near is None:
    return
  near = earlier.get(v.tune_near)
  if near is None or not near.retune or near.reuse_tuned or not v.retune or v.reuse_tuned:
    raise ValueError(f"variant {v.name!r}: tune_near={v.tune_near!r} must name an earlier "
                     "variant, and both must have retune=True, reuse_tuned=False")
  missing = sorted(set(v.baselines or cfg.baselines) - set(near.baselines or cfg.baselines))
  if missing:
    raise ValueError(f"variant {v.name!r}: {v.tune_near!r} does not tune {missing}")
