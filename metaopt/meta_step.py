r"""The jitted meta-step and the state it carries between meta-steps.

One meta-step asks the estimator for a meta-gradient and applies the
meta-optimizer to phi: :math:`\phi \leftarrow \phi + u(\hat\nabla_\phi L)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.config import MetaTrainConfig
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


def make_meta_step(estimator: MetaGradientEstimator, optimizer: optax.GradientTransformation,
                   phi_average: float | None = None):
  """The jitted meta-step ``(family, state) -> (state, metrics)``.

  ``optimizer`` must be wrapped in ``optax.apply_if_finite`` (as :func:`meta_train` does):
  a non-finite meta-loss or meta-gradient leaves phi and the optimizer's inner state
  unchanged and is reported as ``metrics["finite"] = False``.
  """

  @jax.jit
  def meta_step(family: ProblemFamily, state: TrainState):
    grads, runs, metrics = estimator.estimate(state.phi, family, state.runs,
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
  across devices; with one device (or runs that do not divide evenly) ``state`` is
  returned unchanged.
  """
  devices = jax.devices() if devices is None else list(devices)
  num_runs = jax.tree.leaves(state.runs)[0].shape[0]
  if len(devices) == 1 or num_runs % len(devices):
    return state
  mesh = jax.sharding.Mesh(np.array(devices), ("runs",))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  runs = jax.device_put(state.runs, split)
  return jax.device_put(state._replace(runs=None), replicated)._replace(runs=runs)


def init_train_state(family: ProblemFamily, config: RuleConfig, cfg: MetaTrainConfig,
                     estimator: MetaGradientEstimator, optimizer: optax.GradientTransformation
                     ) -> TrainState:
  """phi from ``cfg.seed``, a fresh meta-optimizer state and a first batch of runs."""
  k_phi, k_data = jax.random.split(jax.random.key(cfg.seed))
  phi = init_meta_params(config, k_phi)
  k_runs, k_data = jax.random.split(k_data)
  runs = jax.jit(estimator.start_runs)(phi, family, k_runs)
  return TrainState(phi, optimizer.init(phi), runs, k_data, jnp.zeros((), jnp.int32),
                    None if cfg.phi_average is None else phi)


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
            estimator: MetaGradientEstimator | None = None) -> Prepared:
  """The estimator, the non-finite-skipping meta-optimizer, the first state and the meta-step.

  Example:
    >>> est, opt, state, meta_step = prepare(QuadraticFamily(), LSTMConfig(), MetaTrainConfig())
    >>> state, metrics = meta_step(QuadraticFamily(), state)
  """
  estimator = estimator or default_estimator(config, cfg)
  optimizer = skipping_nonfinite(meta_optimizer or cfg.meta_optimizer())
  state = init_train_state(family, config, cfg, estimator, optimizer)
  return Prepared(estimator, optimizer, state, make_meta_step(estimator, optimizer,
                                                              cfg.phi_average))
