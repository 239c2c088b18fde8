"""Meta-training by truncated backpropagation through time (the paper's section 2).

A run of ``horizon`` optimizee steps is cut into unrolls of ``unroll_length``;
after each unroll, phi takes one meta-optimizer (Adam) step on

.. math:: L(\\phi) = \\frac{1}{B} \\sum_{b=1}^{B} \\sum_{t \\in \\text{unroll}} w_t f_b(\\theta_t)

and the optimizee parameters and LSTM states continue (gradients stopped)
into the next unroll. When the run ends, a fresh batch of problems is drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from metaopt.networks import LSTMConfig, init_meta_params
from metaopt.problems.base import ProblemFamily, Task
from metaopt.rule import learned_rule
from metaopt.unroll import UnrollState, init_unroll, jitted_loss_curves, sample_tasks, unroll


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
  """Meta-training settings (defaults: the paper's).

  Attributes:
    horizon: optimizee steps per run (paper: 100).
    unroll_length: optimizee steps per truncation / meta-step (paper: 20).
    batch_size: problems per meta-step.
    num_meta_steps: total meta-steps (each is one unroll + one phi update).
    meta_learning_rate: Adam's learning rate for phi.
    clip_norm: meta-gradients are clipped to this global norm.
    second_order: let meta-gradients flow through the optimizee's gradients.
    remat: rematerialize each optimizee step in the backward pass.
    valid_every: meta-steps between validations (early stopping keeps the best phi).
    num_valid_problems: size of the fixed validation set (fresh problems).
    seed: seeds phi's initialization, the problems and the validation set.
    collapse_factor: if set, a validation loss above ``collapse_factor`` x the best
      one restores the best phi and resets the meta-optimizer (a guard against
      the learned rule collapsing, e.g. to chance on MNIST); None disables it.
  """

  horizon: int = 100
  unroll_length: int = 20
  batch_size: int = 128
  num_meta_steps: int = 2000
  meta_learning_rate: float = 1e-3
  clip_norm: float = 10.0
  second_order: bool = False
  remat: bool = False
  valid_every: int = 100
  num_valid_problems: int = 128
  seed: int = 0
  collapse_factor: float | None = None

  def __post_init__(self):
    for name in ("horizon", "unroll_length", "batch_size", "num_meta_steps", "valid_every",
                 "num_valid_problems"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"MetaTrainConfig.{name} must be a positive integer, got "
                         f"{getattr(self, name)!r}")
    if self.horizon % self.unroll_length:
      raise ValueError(f"MetaTrainConfig.horizon ({self.horizon}) must be a multiple of "
                       f"unroll_length ({self.unroll_length})")
    if self.collapse_factor is not None and not self.collapse_factor > 1:
      raise ValueError(f"MetaTrainConfig.collapse_factor must be > 1 or None, got "
                       f"{self.collapse_factor!r}")
    for name in ("meta_learning_rate", "clip_norm"):
      if not float(getattr(self, name)) > 0:
        raise ValueError(f"MetaTrainConfig.{name} must be > 0, got {getattr(self, name)!r}")


class TrainState(NamedTuple):
  """Everything meta-training carries from one meta-step to the next."""

  phi: Any
  meta_opt_state: Any
  tasks: Task
  runs: UnrollState
  key: jax.Array
  step: jax.Array


class MetaTrainResult(NamedTuple):
  """Outcome of :func:`meta_train`.

  Attributes:
    phi: the best phi by validation loss (early stopping).
    best_valid_loss: its validation loss (mean over problems and steps 1..T).
    final_phi: phi after the last meta-step.
    history: ``{"meta_loss": [...], "valid_step": [...], "valid_loss": [...],
      "restored_at": [...]}`` (meta-steps where the collapse guard restored the best phi).
    num_skipped: meta-steps skipped for a non-finite meta-loss or gradient.
    seconds: wall time, compilation included.
  """

  phi: Any
  best_valid_loss: float
  final_phi: Any
  history: dict
  num_skipped: int
  seconds: float


def meta_optimizer(cfg: MetaTrainConfig) -> optax.GradientTransformation:
  """Global-norm clipping followed by Adam (the paper's meta-optimizer)."""
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adam(cfg.meta_learning_rate))


def start_runs(family: ProblemFamily, config: LSTMConfig, phi: Any, key: jax.Array,
               batch_size: int) -> tuple[Task, UnrollState]:
  """Draw ``batch_size`` fresh problems and start a run of the learned rule on each."""
  k_tasks, k_runs = jax.random.split(key)
  tasks = jax.vmap(family.sample_task)(jax.random.split(k_tasks, batch_size))
  rule = learned_rule(phi, config)
  runs = jax.vmap(lambda t, k: init_unroll(rule, family, t, k))(
      tasks, jax.random.split(k_runs, batch_size))
  return tasks, runs


def truncated_meta_loss(phi: Any, config: LSTMConfig, family: ProblemFamily, tasks: Task,
                        runs: UnrollState, num_steps: int, second_order: bool = False,
                        remat: bool = False) -> tuple[jax.Array, tuple[UnrollState, jax.Array]]:
  """Mean over problems of sum_t f(theta_t) over one unroll of the learned rule.

  The sum runs over the ``num_steps`` losses after each update (theta_{t0+1} ..
  theta_{t0+T}): the loss at theta_{t0} does not depend on this unroll's phi.

  Returns:
    ``(meta_loss, (new_runs, losses))``, losses of shape (batch, num_steps + 1).
  """
  rule = learned_rule(phi, config)

  def one(task, run):
    new_run, losses = unroll(rule, family, task, run, num_steps, second_order, remat)
    return jnp.sum(losses[1:]), (new_run, losses)

  totals, aux = jax.vmap(one)(tasks, runs)
  return jnp.mean(totals), aux


def make_meta_step(config: LSTMConfig, cfg: MetaTrainConfig):
  """The jitted meta-step: one unroll, its meta-gradient and one meta-update.

  A non-finite meta-loss or meta-gradient leaves phi and the meta-optimizer
  state unchanged and is reported in the metrics (``finite = False``).

  Returns:
    ``meta_step(family, state) -> (state, metrics)``.
  """
  opt = meta_optimizer(cfg)
  grad_fn = jax.value_and_grad(truncated_meta_loss, has_aux=True)

  @jax.jit
  def meta_step(family: ProblemFamily, state: TrainState):
    (loss, (runs, _)), grads = grad_fn(state.phi, config, family, state.tasks, state.runs,
                                       cfg.unroll_length, cfg.second_order, cfg.remat)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = opt.update(grads, state.meta_opt_state, state.phi)
    keep = lambda new, old: jnp.where(finite, new, old)
    phi = jax.tree.map(keep, optax.apply_updates(state.phi, updates), state.phi)
    opt_state = jax.tree.map(keep, opt_state, state.meta_opt_state)
    new_state = state._replace(phi=phi, meta_opt_state=opt_state,
                               runs=jax.lax.stop_gradient(runs), step=state.step + 1)
    return new_state, {"meta_loss": loss, "grad_norm": grad_norm, "finite": finite}

  return meta_step


def init_train_state(family: ProblemFamily, config: LSTMConfig, cfg: MetaTrainConfig
                     ) -> TrainState:
  """phi from ``cfg.seed``, a fresh meta-optimizer state and a first batch of runs."""
  k_phi, k_data = jax.random.split(jax.random.key(cfg.seed))
  phi = init_meta_params(config, k_phi)
  k_runs, k_data = jax.random.split(k_data)
  tasks, runs = _jitted_start_runs(family, config, phi, k_runs, cfg.batch_size)
  return TrainState(phi, meta_optimizer(cfg).init(phi), tasks, runs, k_data,
                    jnp.zeros((), jnp.int32))


_jitted_start_runs = jax.jit(start_runs, static_argnums=(1, 4))


def validation_loss(phi: Any, config: LSTMConfig, family: ProblemFamily, tasks: Task,
                    keys: jax.Array, horizon: int) -> float:
  """Mean over validation problems and steps 1..horizon of the learned rule's loss."""
  curves = jitted_loss_curves(functools.partial(learned_rule, config=config), family,
                              tasks, keys, horizon, (phi,))[0]
  return float(jnp.mean(curves[:, 1:]))


def meta_train(family: ProblemFamily, config: LSTMConfig, cfg: MetaTrainConfig,
               progress: bool = True) -> MetaTrainResult:
  """Meta-train the learned rule on ``family`` by truncated BPTT with early stopping.

  Args:
    family: the problem family to sample training and validation problems from.
    config: the LSTM configuration.
    cfg: meta-training settings.
    progress: show a tqdm bar with the meta-loss and validation loss.

  Returns:
    A :class:`MetaTrainResult` whose ``phi`` is the best on validation.

  Example:
    >>> result = meta_train(QuadraticFamily(), LSTMConfig(), MetaTrainConfig(num_meta_steps=50))
    >>> opt = learned_rule(result.phi, LSTMConfig())
  """
  start = time.perf_counter()
  unrolls_per_run = cfg.horizon // cfg.unroll_length
  valid_tasks, valid_keys = sample_tasks(
      family, jax.random.fold_in(jax.random.key(cfg.seed), 1_000_003), cfg.num_valid_problems)
  meta_step = make_meta_step(config, cfg)
  state = init_train_state(family, config, cfg)
  history = {"meta_loss": [], "valid_step": [], "valid_loss": [], "restored_at": []}
  best_phi, best_valid = state.phi, validation_loss(state.phi, config, family, valid_tasks,
                                                    valid_keys, cfg.horizon)
  history["valid_step"].append(0)
  history["valid_loss"].append(best_valid)
  num_skipped = 0
  bar = tqdm.trange(cfg.num_meta_steps, disable=not progress, desc="meta-train")
  unrolls_done = 0  # unrolls into the current runs
  for i in bar:
    if unrolls_done == unrolls_per_run:  # the runs have ended: fresh problems
      k_runs, k_next = jax.random.split(state.key)
      tasks, runs = _jitted_start_runs(family, config, state.phi, k_runs, cfg.batch_size)
      state, unrolls_done = state._replace(tasks=tasks, runs=runs, key=k_next), 0
    state, metrics = meta_step(family, state)
    unrolls_done += 1
    loss = float(metrics["meta_loss"])
    history["meta_loss"].append(loss)
    if not bool(metrics["finite"]):
      num_skipped += 1
      unrolls_done = unrolls_per_run  # the runs may hold non-finite values: restart them
    if (i + 1) % cfg.valid_every == 0 or i + 1 == cfg.num_meta_steps:
      valid = validation_loss(state.phi, config, family, valid_tasks, valid_keys, cfg.horizon)
      history["valid_step"].append(i + 1)
      history["valid_loss"].append(valid)
      if valid < best_valid:
        best_phi, best_valid = state.phi, valid
      elif cfg.collapse_factor is not None and not valid <= cfg.collapse_factor * best_valid:
        state = state._replace(phi=best_phi, meta_opt_state=meta_optimizer(cfg).init(best_phi))
        history["restored_at"].append(i + 1)
    bar.set_postfix(meta_loss=f"{loss:.4g}", valid=f"{history['valid_loss'][-1]:.4g}",
                    best=f"{best_valid:.4g}", skipped=num_skipped,
                    restored=len(history["restored_at"]))
  jax.block_until_ready(best_phi)
  return MetaTrainResult(best_phi, best_valid, state.phi, history, num_skipped,
                         time.perf_counter() - start)
