r"""Persistent Evolution Strategies: an unbiased meta-gradient over whole runs.

Vicol, Metz and Sohl-Dickstein, "Unbiased gradient estimation in unrolled computation
graphs with persistent evolution strategies", ICML 2021. https://arxiv.org/abs/2112.13835

Each antithetic pair j runs the rule with :math:`\phi + \epsilon_j` and
:math:`\phi - \epsilon_j`, :math:`\epsilon_j \sim N(0, \sigma^2 I)` drawn afresh at
every truncation, and keeps the sum :math:`\xi_j` of its perturbations since its run
started. After a truncation with values :math:`L^\pm_j`,

.. math:: \hat g = \frac{1}{2 N \sigma^2} \sum_{j=1}^{N} \xi_j \, (L^+_j - L^-_j),

and the sum of :math:`\hat g` over a run's truncations is an unbiased estimate of the
gradient of the Gaussian-smoothed value of the whole run, whatever the truncation
length: unlike truncated backprop, it sees how phi's effect on the runs' states plays
out in later truncations. The runs are zeroth-order: no backward pass through them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metaopt.networks import RuleConfig
from metaopt.objectives import Objective, draw_run_settings, run_optimizer, run_value
from metaopt.problems.base import ProblemFamily, Task
from metaopt.rule import learned_rule
from metaopt.unroll import UnrollState, init_unroll, map_runs, run_mode


class PESRuns(NamedTuple):
  """Antithetic pairs of runs in flight.

  Attributes:
    tasks: the N pairs' problems (leading axis N).
    states: the 2N runs' states, the N ``+`` runs then the N ``-`` runs.
    settings: per-pair draws of the objective (:class:`metaopt.objectives.RunSettings`) or ``()``.
    xi: per pair, the sum of its perturbations since its run started (trees like phi,
      leading axis N).
  """

  tasks: Task
  states: UnrollState
  settings: Any
  xi: Any


def _twice(tree: Any) -> Any:
  return jax.tree.map(lambda x: jnp.concatenate([x, x]), tree)


@dataclasses.dataclass(frozen=True)
class PES:
  """Persistent Evolution Strategies as a meta-gradient estimator (``metaopt.meta_train``).

  Attributes:
    config: the learned rule's configuration.
    objective: the meta-objective of each run's truncation.
    unroll_length: optimizee steps per truncation.
    num_pairs: antithetic pairs of runs per meta-step (2 x ``num_pairs`` runs).
    sigma: standard deviation of the perturbations of phi.
    run_mode: how the runs are mapped (:func:`metaopt.unroll.map_runs`); None: the family's.

  Example:
    >>> est = PES(LSTMConfig(), Objective(), unroll_length=10, num_pairs=16, sigma=0.01)
    >>> result = metaopt.meta_train(family, LSTMConfig(), cfg, estimator=est)
  """

  config: RuleConfig
  objective: Objective = Objective()
  unroll_length: int = 20
  num_pairs: int = 8
  sigma: float = 0.01
  run_mode: str | None = None

  def __post_init__(self):
    if int(self.num_pairs) <= 0 or int(self.unroll_length) <= 0:
      raise ValueError(f"PES: num_pairs and unroll_length must be positive, got "
                       f"{self.num_pairs!r}, {self.unroll_length!r}")
    if not self.sigma > 0:
      raise ValueError(f"PES.sigma must be > 0, got {self.sigma!r}")

  def rule(self, phi: Any):
    """The rule a run follows (coordinates flattened per leaf: the same updates)."""
    return learned_rule(phi, self.config, flatten_coordinates=True)

  def start_runs(self, phi: Any, family: ProblemFamily, key: jax.Array) -> PESRuns:
    """``num_pairs`` fresh problems; both runs of a pair start from the same theta_0."""
    n = self.num_pairs
    k_tasks, k_runs = jax.random.split(key)
    tasks = jax.vmap(family.sample_task)(jax.random.split(k_tasks, n))
    settings = draw_run_settings(self.objective, key, n)

    def start(task, run_key, setting):
      return init_unroll(run_optimizer(self.objective, self.rule(phi), setting), family, task,
                         run_key)

    states = jax.vmap(start)(tasks, jax.random.split(k_runs, n), settings)
    xi = jax.tree.map(lambda p: jnp.zeros((n,) + p.shape, p.dtype), phi)
    return PESRuns(tasks, _twice(states), settings, xi)

  def perturbation(self, phi: Any, key: jax.Array) -> Any:
    """``num_pairs`` draws of :math:`\\epsilon \\sim N(0, \\sigma^2 I)` like phi."""
    leaves, treedef = jax.tree.flatten(phi)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([self.sigma * jax.random.normal(k, (self.num_pairs,) + p.shape,
                                                             p.dtype)
                              for k, p in zip(keys, leaves)])

  def values(self, phi: Any, family: ProblemFamily, runs: PESRuns, eps: Any
             ) -> tuple[jax.Array, tuple[UnrollState, jax.Array]]:
    """The 2N runs' values over one truncation, with phi + eps (first N) and phi - eps."""
    phis = jax.tree.map(lambda p, e: jnp.concatenate([p + e, p - e]), phi, eps)

    def one(phi_i, task, state, setting):
      return run_value(self.objective, self.rule(phi_i), family, task, state, setting,
                       self.unroll_length)

    mode = self.run_mode or run_mode(family)
    return map_runs(one, phis, _twice(runs.tasks), runs.states, _twice(runs.settings),
                    mode=mode)

  def estimate(self, phi: Any, family: ProblemFamily, runs: PESRuns, key: jax.Array
               ) -> tuple[Any, PESRuns, dict]:
    """The PES meta-gradient of one truncation and the runs after it."""
    eps = self.perturbation(phi, key)
    xi = jax.tree.map(jnp.add, runs.xi, eps)
    values, (states, _) = self.values(phi, family, runs, eps)
    n = self.num_pairs
    diff = values[:n] - values[n:]
    scale = 1.0 / (2.0 * n * self.sigma ** 2)
    grads = jax.tree.map(lambda x: scale * jnp.tensordot(diff, x, axes=1), xi)
    new_runs = PESRuns(runs.tasks, states, runs.settings, xi)
    return grads, jax.lax.stop_gradient(new_runs), {"meta_loss": jnp.mean(values)}
