r"""The jitted meta-step and the state it carries between meta-steps.

One meta-step asks the estimator for a meta-gradient and applies the
meta-optimizer to phi: :math:`\phi \leftarrow \phi + u(\hat\nabla_\phi L)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from metaopt.config import MetaTrainConfig
from metaopt.distributed import AXIS, Placement
from metaopt.estimators import MetaGradientEstimator, TruncatedBackprop
from metaopt.networks import RuleConfig, init_meta_params
from metaopt.problems.base import ProblemFamily

# optax.apply_if_finite applies updates anyway after this many non-finite steps in a row;
# the trainer stops long before (its ``max_consecutive_nonfinite``).
NEVER = 2 ** 30


class TrainState(NamedTuple):
  """What the jitted meta-step carries: phi, its optimizer, the runs in flight."""

  phi: Any
  opt_state: optax.ApplyIfFiniteState
  runs: Any
  key: jax.Array
  step: jax.Array
  phi_avg: Any = None   # the moving average of phi (``phi_average``), else None


def _estimate_per_device(estimator: MetaGradientEstimator, placement: Placement | None,
                         runs: Any):
  """``estimator.estimate``, run by each device on its own runs when it can be (or None).

  An estimator whose ``estimate`` is a mean over its runs (``splits_over_runs = True``,
  e.g. :class:`TruncatedBackprop`) runs under ``jax.shard_map`` on each device's runs; the
  devices' gradients and metrics are then averaged once. Left to XLA's partitioner, the
  meta-gradient of a split batch is all-reduced at every step of the backward scan
  (docs/performance.md).
  """
  if (placement is None or placement.mesh is None
      or not getattr(estimator, "splits_over_runs", False)
      or not all(placement.splits(x) for x in jax.tree.leaves(runs))):
    return None
  one, split = PartitionSpec(), PartitionSpec(AXIS)

  def local(phi, family, runs, key):
    grads, runs, metrics = estimator.estimate(phi, family, runs, key)
    return jax.lax.pmean(grads, AXIS), runs, jax.lax.pmean(metrics, AXIS)
  return jax.shard_map(local, mesh=placement.mesh, in_specs=(one, one, split, one),
                       out_specs=(one, split, one), check_vma=False)


def make_meta_step(estimator: MetaGradientEstimator, optimizer: optax.GradientTransformation,
                   phi_average: float | None = None, placement: Placement | None = None):
  """The jitted meta-step ``(family, state) -> (state, metrics)``.

  ``optimizer`` must be wrapped in ``optax.apply_if_finite`` (as :func:`meta_train` does):
  a non-finite meta-loss or meta-gradient leaves phi and the optimizer's inner state
  unchanged and is reported as ``metrics["finite"] = False``. With a ``placement`` over
  several devices, an estimator that declares ``splits_over_runs`` runs on each device's
  runs and the meta-gradient is averaged across devices once per meta-step.
  """

  @jax.jit
  def meta_step(family: ProblemFamily, state: TrainState):
    estimate = _estimate_per_device(estimator, placement, state.runs) or estimator.estimate
    grads, runs, metrics = estimate(state.phi, family, state.runs,
                                    jax.random.fold_in(state.key, state.step))
    loss = metrics["meta_loss"]
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.phi)
    phi = optax.apply_updates(state.phi, updates)
    phi_avg = None if phi_average is None else optax.incremental_update(
        phi, state.phi_avg, 1.0 - phi_average)
    new_state = TrainState(phi, opt_state, runs, state.key, state.step + 1, phi_avg)
    return new_state, {**metrics, "grad_norm": optax.tree.norm(grads),
                       "finite": opt_state.notfinite_count == 0}

  return meta_step


def shard_over_devices(state: TrainState, devices=None) -> TrainState:
  """Shard the runs of ``state`` across ``devices`` (default: all), replicate the rest.

  jit then runs each device's share of the runs and XLA reduces the meta-gradient
  across devices; with one device (or, within one process, runs that do not divide
  evenly) ``state`` is returned unchanged. ``devices`` may span processes
  (``jax.distributed``); see :class:`metaopt.distributed.Placement`.
  """
  return Placement(devices).place(state)


def init_train_state(family: ProblemFamily, config: RuleConfig, cfg: MetaTrainConfig,
                     estimator: MetaGradientEstimator, optimizer: optax.GradientTransformation,
                     placement: Placement | None = None) -> TrainState:
  """phi from ``cfg.seed``, a fresh meta-optimizer state and a first batch of runs.

  With a ``placement`` the state is placed on its mesh; across processes each device
  draws only its own runs (:meth:`metaopt.distributed.Placement.split_outputs`), the
  values a single process draws.
  """
  k_phi, k_data = jax.random.split(jax.random.key(cfg.seed))
  phi = init_meta_params(config, k_phi)
  k_runs, k_data = jax.random.split(k_data)
  if placement is None or not placement.multi_process:
    runs = jax.jit(estimator.start_runs)(phi, family, k_runs)
    state = TrainState(phi, optimizer.init(phi), runs, k_data, jnp.zeros((), jnp.int32),
                       None if cfg.phi_average is None else phi)
    return state if placement is None else placement.place(state)
  state = placement.put(TrainState(phi, optimizer.init(phi), None, k_data,
                                   jnp.zeros((), jnp.int32),
                                   None if cfg.phi_average is None else phi))
  runs = placement.split_outputs(estimator.start_runs)(state.phi, placement.put(family),
                                                       placement.put(k_runs))
  return placement.place(state._replace(runs=runs))


def default_estimator(config: RuleConfig, cfg: MetaTrainConfig) -> TruncatedBackprop:
  """Truncated backprop with ``cfg``'s objective, unroll length, batch, remat and run mode."""
  return TruncatedBackprop(config, cfg.objective, cfg.truncation.unroll_length, cfg.batch_size,
                           remat=cfg.remat, run_mode=cfg.run_mode)


def skipping_nonfinite(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """``optimizer`` that leaves phi and its state unchanged on a non-finite meta-gradient."""
  return optax.apply_if_finite(optimizer, NEVER)


class Prepared(NamedTuple):
  """What :func:`prepare` builds: the parts of meta-training before its first meta-step."""

  estimator: MetaGradientEstimator
  optimizer: optax.GradientTransformation
  state: TrainState
  meta_step: Any


def prepare(family: ProblemFamily, config: RuleConfig, cfg: MetaTrainConfig,
            meta_optimizer: optax.GradientTransformation | None = None,
            estimator: MetaGradientEstimator | None = None,
            placement: Placement | None = None) -> Prepared:
  """The estimator, the non-finite-skipping meta-optimizer, the first state and the meta-step.

  With a ``placement`` (:class:`metaopt.distributed.Placement`, as :func:`meta_train`
  passes) the first state is placed on its mesh: runs split, the rest replicated.

  Example:
    >>> est, opt, state, meta_step = prepare(QuadraticFamily(), LSTMConfig(), MetaTrainConfig())
    >>> state, metrics = meta_step(QuadraticFamily(), state)
  """
  estimator = estimator or default_estimator(config, cfg)
  optimizer = skipping_nonfinite(meta_optimizer or cfg.meta_optimizer())
  state = init_train_state(family, config, cfg, estimator, optimizer, placement)
  return Prepared(estimator, optimizer, state, make_meta_step(estimator, optimizer,
                                                              cfg.phi_average, placement))
