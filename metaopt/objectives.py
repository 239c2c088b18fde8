"""Meta-objectives: what one run's unroll contributes to the meta-loss.

The paper's objective is the sum of the optimizee's losses over the unroll,
:math:`\\sum_t f(\\theta_t)`; ``"log_loss"`` sums :math:`\\log f(\\theta_t)` instead
(Wichrowska et al. 2017), which weighs runs of very different loss scales alike.

*Imitation* (Chen et al. 2020, "Training stronger baselines for learning to
optimize", https://arxiv.org/abs/2010.09089): on an imitation run the optimizee
follows a teacher (Adam) while the learned rule runs beside it on the same
gradients, and the run's value is the summed distance between the rule's updates
and the teacher's. Which runs imitate, and at which teacher rate, is drawn per
run (:class:`RunSettings`) when runs start.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.problems.base import ProblemFamily, Task
from metaopt.unroll import UnrollState, unroll


@dataclasses.dataclass(frozen=True)
class Imitation:
  """Imitation of Adam on a share of the meta-training runs.

  Attributes:
    prob: probability that a run imitates Adam.
    learning_rate: the imitated Adam's learning rate (the low end of a range with
      ``max_learning_rate``).
    weight: scale of an imitation run's value against the loss terms of other runs.
    max_learning_rate: None: every imitation run's Adam uses ``learning_rate``; else
      each run draws its rate log-uniformly from ``[learning_rate, max_learning_rate]``,
      so the rule imitates a range of step sizes.

  Example:
    >>> Imitation(prob=0.5, learning_rate=0.01, max_learning_rate=0.0316)
  """

  prob: float
  learning_rate: float
  weight: float = 1.0
  max_learning_rate: float | None = None

  def __post_init__(self):
    if not 0 <= self.prob <= 1:
      raise ValueError(f"Imitation.prob must be in [0, 1], got {self.prob!r}")
    for name in ("learning_rate", "weight"):
      if not float(getattr(self, name)) > 0:
        raise ValueError(f"Imitation.{name} must be > 0, got {getattr(self, name)!r}")
    if self.max_learning_rate is not None and not self.max_learning_rate > self.learning_rate:
      raise ValueError(f"Imitation.max_learning_rate must be None or above learning_rate "
                       f"({self.learning_rate!r}), got {self.max_learning_rate!r}")


@dataclasses.dataclass(frozen=True)
class Objective:
  """The meta-objective of one run's unroll.

  Attributes:
    loss: ``"loss"`` (paper: the sum of the losses after each update) or
      ``"log_loss"`` (the sum of their logs; losses must be > 0).
    imitation: imitation of Adam on a share of the runs (None: never).

  Example:
    >>> Objective(loss="log_loss", imitation=Imitation(0.5, 0.01))
  """

  loss: str = "loss"
  imitation: Imitation | None = None

  def __post_init__(self):
    if self.loss not in LOSS_TERMS:
      raise ValueError(f"Objective.loss must be one of {sorted(LOSS_TERMS)}, got {self.loss!r}")


def _log_loss(f: jax.Array) -> jax.Array:
  return jnp.log(jnp.maximum(f, jnp.finfo(jnp.float32).tiny))


# Per-step loss -> its term in the meta-objective.
LOSS_TERMS = {"loss": lambda f: f, "log_loss": _log_loss}


class RunSettings(NamedTuple):
  """What a run of an imitation objective was drawn to do (one entry per run).

  Attributes:
    imitate: bool; True: the optimizee follows Adam and the run's value is the distance.
    teacher_rate: that Adam's learning rate.
  """

  imitate: jax.Array
  teacher_rate: jax.Array


def draw_run_settings(objective: Objective, key: jax.Array, num_runs: int
                      ) -> RunSettings | tuple:
  """Which of ``num_runs`` runs imitate, and their teacher rates (``()`` without imitation).

  Example:
    >>> draw_run_settings(Objective(imitation=Imitation(0.5, 0.01)), key, 8).imitate.shape
    (8,)
  """
  im = objective.imitation
  if im is None:
    return ()
  imitate = jax.random.bernoulli(jax.random.fold_in(key, 1), im.prob, (num_runs,))
  if im.max_learning_rate is None:
    rates = jnp.full((num_runs,), im.learning_rate, jnp.float32)
  else:
    lo, hi = jnp.log(im.learning_rate), jnp.log(im.max_learning_rate)
    rates = jnp.exp(jax.random.uniform(jax.random.fold_in(key, 2), (num_runs,),
                                       minval=lo, maxval=hi))
  return RunSettings(imitate, rates)


def update_distance(updates: Any, target: Any, eps: float = 1e-12) -> jax.Array:
  """Relative squared distance :math:`\\|u - t\\|^2 / (\\|t\\|^2 + \\epsilon)` over all leaves.

  Scale-free, so imitation terms are comparable across problems and steps.

  Example:
    >>> update_distance({"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([2.0, 0.0])})
    Array(0.25, dtype=float32)
  """
  sq = lambda tree: optax.tree.norm(optax.tree.cast(tree, jnp.float32), squared=True)
  return sq(optax.tree.sub(updates, target)) / (sq(target) + eps)


class ImitationState(NamedTuple):
  """The states of the rule and of the teacher in :func:`imitating`."""

  rule: Any
  teacher: Any


def imitating(rule: optax.GradientTransformation, teacher: optax.GradientTransformation,
              imitate: jax.Array | bool) -> optax.GradientTransformationExtraArgs:
  """``rule`` and ``teacher`` on the same gradients; the teacher's updates apply if ``imitate``.

  Both states advance every step, so the rule's state is the one it would have on
  the teacher's trajectory.

  Example:
    >>> opt = imitating(metaopt.learned_rule(phi, config), optax.adam(1e-2), True)
    >>> updates, state = opt.update(grads, opt.init(params), params)   # Adam's updates
  """

  def init_fn(params):
    return ImitationState(rule.init(params), teacher.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    own, rule_state = rule.update(updates, state.rule, params)
    target, teacher_state = teacher.update(updates, state.teacher, params)
    applied = jax.tree.map(lambda t, u: jnp.where(imitate, t, u), target, own)
    return applied, ImitationState(rule_state, teacher_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def run_optimizer(objective: Objective, rule: optax.GradientTransformation,
                  settings: RunSettings | tuple) -> optax.GradientTransformation:
  """The optimizer a run of ``objective`` follows: the rule, or the rule beside its teacher."""
  if objective.imitation is None:
    return rule
  return imitating(rule, optax.adam(settings.teacher_rate), settings.imitate)


def run_value(objective: Objective, rule: optax.GradientTransformation, family: ProblemFamily,
              task: Task, run: UnrollState, settings: RunSettings | tuple, num_steps: int,
              second_order: bool = False, remat: bool = False
              ) -> tuple[jax.Array, tuple[UnrollState, jax.Array]]:
  """One run's unroll of ``num_steps`` and its value under ``objective``.

  Args:
    objective: the meta-objective.
    rule: the learned rule (from phi, traced under ``jax.grad``).
    family: the problem family.
    task: the run's problem.
    run: the run's state (from :func:`metaopt.unroll.init_unroll` with
      :func:`run_optimizer`'s optimizer, or a previous unroll).
    settings: this run's :class:`RunSettings` (``()`` without imitation).
    num_steps: the unroll's length.
    second_order: let meta-gradients flow through the optimizee's gradients.
    remat: rematerialize the unroll in the backward pass.

  Returns:
    ``(value, (new_run, losses))``: the sum of the loss terms after each update, or on
    an imitation run ``weight`` x the sum over steps of :func:`update_distance`.
  """
  opt = run_optimizer(objective, rule, settings)
  term = LOSS_TERMS[objective.loss]
  if objective.imitation is None:
    new_run, losses = unroll(opt, family, task, run, num_steps, second_order, remat)
    return jnp.sum(term(losses[1:])), (new_run, losses)

  teacher = optax.adam(settings.teacher_rate)

  def distance(grads, params, state):
    own, _ = rule.update(grads, state.rule, params)
    target, _ = teacher.update(grads, state.teacher, params)
    return update_distance(own, jax.lax.stop_gradient(target))

  new_run, losses, distances = unroll(opt, family, task, run, num_steps, second_order, remat,
                                      probe=distance)
  value = jnp.where(settings.imitate, objective.imitation.weight * jnp.sum(distances),
                    jnp.sum(term(losses[1:])))
  return value, (new_run, losses)
