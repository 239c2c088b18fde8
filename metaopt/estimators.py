"""Meta-gradient estimators: (phi, runs in flight, key) -> (meta-gradient, new runs, metrics).

The trainer (:mod:`metaopt.trainer`) only calls an estimator's ``start_runs`` and
``estimate``, so estimators are interchangeable. :class:`TruncatedBackprop` is the
paper's: backpropagation through one truncation of the runs. An evolution-strategies
estimator (e.g. Persistent Evolution Strategies, Vicol et al. 2021) fits the same
interface: its runs would carry the particles' accumulated perturbations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from metaopt.networks import RuleConfig
from metaopt.objectives import Objective, draw_run_settings, run_optimizer, run_value
from metaopt.problems.base import ProblemFamily, Task
from metaopt.rule import learned_rule
from metaopt.unroll import UnrollState, init_unroll, map_runs, run_mode


class Runs(NamedTuple):
  """A batch of meta-training runs in flight (leading axis: runs).

  Attributes:
    tasks: the problems.
    states: the runs' optimizee parameters, optimizer states, keys and steps.
    settings: per-run draws of the objective (:class:`metaopt.objectives.RunSettings`),
      or ``()``.
  """

  tasks: Task
  states: UnrollState
  settings: Any


class MetaGradientEstimator(Protocol):
  """What the trainer needs from a meta-gradient estimator (a hashable, static object).

  Runs carry the run axis first in every leaf. Across devices and processes
  (:mod:`metaopt.distributed`) the trainer splits them along it: it calls ``start_runs``
  with the same key everywhere under ``jax.jit`` with split outputs, so each device draws
  only its own runs, bit for bit those of the unsplit draw, provided ``start_runs`` draws
  with ``jax.random`` from its key alone. An estimator whose ``estimate`` is the mean over
  its runs of a per-run term, with no per-run randomness drawn from ``estimate``'s key,
  may set the class attribute ``splits_over_runs = True``: the meta-step then runs it on
  each device's runs (``jax.shard_map``) and averages the devices' gradients and metrics
  once; otherwise XLA partitions the whole estimate (the same numbers up to rounding,
  more communication).
  """

  def start_runs(self, phi: Any, family: ProblemFamily, key: jax.Array) -> Any:
    """Fresh runs in flight (new problems, theta_0, optimizer states), run axis first."""

  def estimate(self, phi: Any, family: ProblemFamily, runs: Any, key: jax.Array
               ) -> tuple[Any, Any, dict]:
    """``(meta-gradient like phi, runs after one truncation, {"meta_loss": scalar, ...})``."""


@dataclasses.dataclass(frozen=True)
class TruncatedBackprop:
  """Truncated backpropagation through time (the paper's section 2).

  Each ``estimate`` unrolls every run ``unroll_length`` steps and returns

  .. math:: \\nabla_\\phi \\frac{1}{B} \\sum_{b=1}^{B} v_b(\\phi)

  where :math:`v_b` is run b's value under ``objective`` (e.g. the sum of its losses);
  the runs then continue, gradients stopped, into the next truncation.

  Attributes:
    config: the learned rule's configuration.
    objective: the meta-objective of each run.
    unroll_length: optimizee steps per truncation.
    batch_size: runs per meta-step.
    second_order: let meta-gradients flow through the optimizee's gradients.
    remat: rematerialize the unroll in the backward pass (less memory).
    run_mode: how the runs are mapped (:func:`metaopt.unroll.map_runs`); None: the
      family's ``run_mode``.

  Example:
    >>> est = TruncatedBackprop(LSTMConfig(), Objective(), unroll_length=20, batch_size=128)
    >>> runs = est.start_runs(phi, family, key)
    >>> grads, runs, metrics = est.estimate(phi, family, runs, key)
  """

  config: RuleConfig
  objective: Objective = Objective()
  unroll_length: int = 20
  batch_size: int = 128
  second_order: bool = False
  remat: bool = False
  run_mode: str | None = None
  # The meta-loss is a mean over runs: each device may estimate on its own runs.
  splits_over_runs: ClassVar[bool] = True

  def rule(self, phi: Any):
    """The rule meta-training unrolls: each leaf's coordinates flattened (same updates)."""
    return learned_rule(phi, self.config, flatten_coordinates=True)

  def start_runs(self, phi: Any, family: ProblemFamily, key: jax.Array) -> Runs:
    """Draw ``batch_size`` problems and start a run of the learned rule on each."""
    k_tasks, k_runs = jax.random.split(key)
    tasks = jax.vmap(family.sample_task)(jax.random.split(k_tasks, self.batch_size))
    settings = draw_run_settings(self.objective, key, self.batch_size)

    def start(task, run_key, setting):
      opt = run_optimizer(self.objective, self.rule(phi), setting)
      return init_unroll(opt, family, task, run_key)

    states = jax.vmap(start)(tasks, jax.random.split(k_runs, self.batch_size), settings)
    return Runs(tasks, states, settings)

  def meta_loss(self, phi: Any, family: ProblemFamily, runs: Runs
                ) -> tuple[jax.Array, tuple[Runs, jax.Array]]:
    """Mean over runs of their values; aux: the runs after the unroll and their losses."""
    rule = self.rule(phi)

    def one(task, state, setting):
      return run_value(self.objective, rule, family, task, state, setting, self.unroll_length,
                       self.second_order, self.remat)

    mode = self.run_mode or run_mode(family)
    values, (states, losses) = map_runs(one, runs.tasks, runs.states, runs.settings, mode=mode)
    return jnp.mean(values), (runs._replace(states=states), losses)

  def estimate(self, phi: Any, family: ProblemFamily, runs: Runs, key: jax.Array
               ) -> tuple[Any, Runs, dict]:
    """The meta-gradient of :meth:`meta_loss` and the runs one truncation later."""
    del key  # deterministic given the runs
    (loss, (runs, _)), grads = jax.value_and_grad(self.meta_loss, has_aux=True)(
        phi, family, runs)
    return grads, jax.lax.stop_gradient(runs), {"meta_loss": loss}
