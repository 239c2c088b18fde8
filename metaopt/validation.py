"""Validation during meta-training: fresh problems, a score, early stopping settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from metaopt.networks import RuleConfig
from metaopt.problems.base import ProblemFamily, Task
from metaopt.rule import learned_rule
from metaopt.unroll import jitted_loss_curves

# Seeds the validation problems (fold_in of the meta-training seed's key).
VALIDATION_SET = 1_000_003


def _mean_score(curves: jax.Array, horizon: int) -> jax.Array:
  del horizon
  return jnp.mean(curves)


def _final_score(curves: jax.Array, horizon: int) -> jax.Array:
  ends = curves.reshape(curves.shape[0], -1, horizon)[:, :, -min(10, horizon):]
  return jnp.mean(ends)


# (loss curves, runs x steps 1..mT; horizon T) -> the score early stopping minimizes.
SCORES = {"mean": _mean_score, "final": _final_score}


@dataclasses.dataclass(frozen=True)
class Validation:
  """How meta-training validates phi and keeps the best one.

  Attributes:
    every: meta-steps between validations.
    num_problems: size of the fixed validation set (fresh problems).
    score: ``"mean"`` (mean loss over problems and steps 1..T, the meta-objective) or
      ``"final"`` (mean over the last ``min(10, T)`` steps, the criterion the baselines'
      learning rates are tuned on).
    horizon_multiple: validation runs last ``m`` x the stage's horizon ``T``; ``"final"``
      then averages the last steps before each of ``T, 2T, ..., mT``, so early stopping
      keeps a phi that holds up past its training horizon.
    collapse_factor: if set, a validation score above ``collapse_factor`` x the best one
      restores the best phi with a fresh meta-optimizer state (a guard against the rule
      collapsing, e.g. to chance on MNIST); None disables it.

  Example:
    >>> Validation(every=50, num_problems=16, score="final", horizon_multiple=2)
  """

  every: int = 100
  num_problems: int = 128
  score: str = "mean"
  horizon_multiple: int = 1
  collapse_factor: float | None = None

  def __post_init__(self):
    for name in ("every", "num_problems", "horizon_multiple"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"Validation.{name} must be a positive integer, got "
                         f"{getattr(self, name)!r}")
    if self.score not in SCORES:
      raise ValueError(f"Validation.score must be one of {sorted(SCORES)}, got {self.score!r}")
    if self.collapse_factor is not None and not self.collapse_factor > 1:
      raise ValueError(f"Validation.collapse_factor must be > 1 or None, got "
                       f"{self.collapse_factor!r}")

  def collapsed(self, score: float, best: float) -> bool:
    """Whether ``score`` is a collapse against ``best`` (never without a collapse factor)."""
    return self.collapse_factor is not None and not score <= self.collapse_factor * best


def validation_score(phi: Any, config: RuleConfig, family: ProblemFamily, tasks: Task,
                     keys: jax.Array, horizon: int, validation: Validation) -> float:
  """The learned rule's validation score on fixed problems (see :class:`Validation`).

  Args:
    phi: meta-parameters.
    config: their rule configuration.
    family: where ``tasks`` come from.
    tasks: the validation problems; ``keys`` their run keys.
    keys: one PRNG key per problem.
    horizon: the current stage's horizon T.
    validation: the settings (score, horizon multiple).

  Returns:
    A Python float; lower is better.

  Example:
    >>> validation_score(phi, LSTMConfig(), fam, tasks, keys, 100, Validation())
  """
  num_steps = horizon * validation.horizon_multiple
  curves = jitted_loss_curves(learned_rule, family, tasks, keys, num_steps, (phi, config))[0]
  return float(SCORES[validation.score](curves[:, 1:], horizon))
