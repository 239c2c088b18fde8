"""Meta-training by truncated backpropagation through time (the paper's section 2).

A run of ``horizon`` optimizee steps is cut into unrolls of ``unroll_length``;
after each unroll, phi takes one meta-optimizer (Adam) step on

.. math:: L(\\phi) = \\frac{1}{B} \\sum_{b=1}^{B} \\sum_{t \\in \\text{unroll}} w_t f_b(\\theta_t)

and the optimizee parameters and LSTM states continue (gradients stopped)
into the next unroll. When the run ends, a fresh batch of problems is drawn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from metaopt.checkpoint import CorruptCheckpointError, load_tree_checkpoint, save_tree_checkpoint
from metaopt.imitation import Imitation, imitating, teacher, with_teacher_rates
from metaopt.networks import RuleConfig, config_from_dict, init_meta_params
from metaopt.problems.base import ProblemFamily, Task
from metaopt.rule import learned_rule, rule_factory
from metaopt.unroll import (UnrollState, init_unroll, jitted_loss_curves, map_runs, sample_tasks,
                            unroll)


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
    remat: two-level rematerialization of the unroll in the backward pass (less memory).
    valid_every: meta-steps between validations (early stopping keeps the best phi).
    num_valid_problems: size of the fixed validation set (fresh problems).
    seed: seeds phi's initialization, the problems and the validation set.
    checkpoint_every: meta-steps between checkpoints (when a checkpoint folder is given).
    max_consecutive_nonfinite: stop after this many non-finite meta-steps in a row.
    collapse_factor: if set, a validation loss above ``collapse_factor`` x the best
      one restores the best phi and resets the meta-optimizer (a guard against
      the learned rule collapsing, e.g. to chance on MNIST); None disables it.
    curriculum: longer horizons to move on to after ``horizon`` (Chen et al. 2020,
      "Training stronger baselines for learning to optimize"), e.g. (200, 500, 1000);
      unrolls stay ``unroll_length`` long. Validation runs the current stage's horizon.
    curriculum_patience: validations without improvement before the next stage
      starts (from the stage's best phi, with a fresh meta-optimizer state).
    meta_objective: ``"loss"`` (paper: sum of losses over the unroll) or
      ``"log_loss"`` (sum of log losses, Wichrowska et al. 2017; losses must be > 0).
    step_weighting: the weights w_t of the meta-objective's terms by run step t:
      ``"uniform"`` (paper: w_t = 1) or ``"linear"`` (w_t = 2t / (horizon + 1), mean 1 over
      the first stage's run): later steps count more, so the rule is pushed to keep
      descending where the loss is already small instead of winning the run's early steps.
    imitation_prob: probability that a meta-training run imitates Adam (Chen et al. 2020):
      the optimizee follows ``optax.adam(imitation_learning_rate)`` and that run's
      meta-objective is ``imitation_weight`` x the sum over steps of the relative squared
      distance between the rule's updates and Adam's (:mod:`metaopt.imitation`). 0 (paper):
      never; validation always runs the learned rule itself.
    imitation_learning_rate: the imitated Adam's learning rate (e.g. the tuned one).
    imitation_max_learning_rate: None: every imitation run's Adam uses
      ``imitation_learning_rate``; else each run draws its Adam's rate log-uniformly
      between the two, so the rule imitates a range of step sizes (e.g. the rates tuned
      for the meta-training task and for a 10x longer horizon) rather than one.
    imitation_weight: scale of the imitation term against the loss terms of other runs.
    phi_average: if set, the decay ``d`` of an exponential moving average of phi
      (Polyak averaging), ``phi_avg <- d phi_avg + (1 - d) phi`` after every meta-step;
      validation, early stopping and the returned phi then use the average, which
      smooths the noise of small meta-batches. None (paper): the raw phi.
    meta_lr_schedule: ``"constant"`` (paper) or ``"cosine"``: the meta-learning rate
      decays as ``0.5 (1 + cos(pi s / num_meta_steps))`` over meta-steps ``s`` (from the
      meta-step count, so it survives collapse-guard resets and resumes).
    valid_objective: what early stopping minimizes on the validation runs: ``"mean"``
      (the meta-objective, mean loss over steps 1..T) or ``"final"`` (mean loss over the
      last ``min(10, T)`` steps: the criterion the baselines' learning rates are tuned on).
    valid_horizon_multiple: validation runs last ``m`` x the (stage's) horizon ``T``; with
      ``"final"`` the score is the mean over the last ``min(10, T)`` steps before each of
      steps ``T, 2T, ..., mT``, so early stopping keeps a phi that holds up past its
      training horizon. 1 (default): validation runs ``T`` steps.
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
  checkpoint_every: int = 100
  max_consecutive_nonfinite: int = 20
  curriculum: tuple[int, ...] = ()
  curriculum_patience: int = 1
  meta_objective: str = "loss"
  step_weighting: str = "uniform"
  imitation_prob: float = 0.0
  imitation_learning_rate: float = 1e-2
  imitation_weight: float = 1.0
  imitation_max_learning_rate: float | None = None
  phi_average: float | None = None
  meta_lr_schedule: str = "constant"
  valid_objective: str = "mean"
  valid_horizon_multiple: int = 1

  def __post_init__(self):
    for name in ("horizon", "unroll_length", "batch_size", "num_meta_steps", "valid_every",
                 "num_valid_problems", "checkpoint_every", "max_consecutive_nonfinite",
                 "valid_horizon_multiple"):
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
    object.__setattr__(self, "curriculum", tuple(int(h) for h in self.curriculum))
    horizons = self.horizons()
    if any(b <= a for a, b in zip(horizons, horizons[1:])) or any(
        h % self.unroll_length for h in horizons):
      raise ValueError(f"MetaTrainConfig.curriculum must increase from horizon and hold "
                       f"multiples of unroll_length ({self.unroll_length}), got horizons {horizons}")
    if self.meta_objective not in META_OBJECTIVES:
      raise ValueError(f"MetaTrainConfig.meta_objective must be one of {sorted(META_OBJECTIVES)}, "
                       f"got {self.meta_objective!r}")
    if self.step_weighting not in STEP_WEIGHTINGS:
      raise ValueError(f"MetaTrainConfig.step_weighting must be one of {sorted(STEP_WEIGHTINGS)}, "
                       f"got {self.step_weighting!r}")
    if not 0 <= self.imitation_prob <= 1:
      raise ValueError(f"MetaTrainConfig.imitation_prob must be in [0, 1], got "
                       f"{self.imitation_prob!r}")
    for name in ("imitation_learning_rate", "imitation_weight"):
      if not float(getattr(self, name)) > 0:
        raise ValueError(f"MetaTrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
    if (self.imitation_max_learning_rate is not None
        and not self.imitation_max_learning_rate > self.imitation_learning_rate):
      raise ValueError(f"MetaTrainConfig.imitation_max_learning_rate must be None or above "
                       f"imitation_learning_rate ({self.imitation_learning_rate!r}), got "
                       f"{self.imitation_max_learning_rate!r}")
    if self.phi_average is not None and not 0 <= self.phi_average < 1:
      raise ValueError(f"MetaTrainConfig.phi_average must be in [0, 1) or None, got "
                       f"{self.phi_average!r}")
    if self.meta_lr_schedule not in ("constant", "cosine"):
      raise ValueError(f"MetaTrainConfig.meta_lr_schedule must be 'constant' or 'cosine', got "
                       f"{self.meta_lr_schedule!r}")
    if self.valid_objective not in VALID_OBJECTIVES:
      raise ValueError(f"MetaTrainConfig.valid_objective must be one of {sorted(VALID_OBJECTIVES)}, "
                       f"got {self.valid_objective!r}")
    if int(self.curriculum_patience) <= 0:
      raise ValueError(f"MetaTrainConfig.curriculum_patience must be a positive integer, got "
                       f"{self.curriculum_patience!r}")

  def imitation(self) -> Imitation | None:
    """The :class:`metaopt.imitation.Imitation` settings, or None without imitation runs."""
    if self.imitation_prob == 0:
      return None
    top = self.imitation_max_learning_rate
    return Imitation(float(self.imitation_prob), float(self.imitation_learning_rate),
                     float(self.imitation_weight), None if top is None else float(top))

  def horizons(self) -> tuple[int, ...]:
    """The meta-training horizon of each curriculum stage (``(horizon,)`` without one)."""
    return (int(self.horizon),) + tuple(self.curriculum)


# Per-step loss -> its term in the meta-objective.
META_OBJECTIVES = {"loss": lambda f: f,
                   "log_loss": lambda f: jnp.log(jnp.maximum(f, jnp.finfo(jnp.float32).tiny))}


# (run steps t of the unroll's losses, first-stage horizon) -> the weights w_t of their terms.
STEP_WEIGHTINGS = {"uniform": lambda t, horizon: jnp.ones(t.shape, jnp.float32),
                   "linear": lambda t, horizon: 2.0 * t.astype(jnp.float32) / (horizon + 1)}


# (validation loss curves, runs x steps 1..mT; horizon T) -> the score early stopping minimizes.
VALID_OBJECTIVES = {
    "mean": lambda curves, horizon: jnp.mean(curves),
    "final": lambda curves, horizon: jnp.mean(
        curves.reshape(curves.shape[0], -1, horizon)[:, :, -min(10, horizon):]),
}


class TrainState(NamedTuple):
  """Everything meta-training carries from one meta-step to the next."""

  phi: Any
  meta_opt_state: Any
  tasks: Task
  runs: UnrollState
  key: jax.Array
  step: jax.Array
  phi_avg: Any = None   # the moving average of phi (``phi_average``), else None


class MetaTrainResult(NamedTuple):
  """Outcome of :func:`meta_train`.

  Attributes:
    phi: the best phi by validation loss (early stopping).
    best_valid_loss: its validation score (``cfg.valid_objective``; default: mean over
      problems and steps 1..T).
    final_phi: phi after the last meta-step (its moving average with ``phi_average``).
    history: ``{"meta_loss": [...], "valid_step": [...], "valid_loss": [...],
      "valid_horizon": [...], "restored_at": [...], "stage_start": [...]}``
      (restored_at: meta-steps where the collapse guard restored the best phi;
      stage_start: meta-steps where a curriculum stage began).
    num_skipped: meta-steps skipped for a non-finite meta-loss or gradient.
    seconds: wall time, compilation included (with ``resume``: the interrupted runs' too,
      up to their last checkpoint).
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


def meta_lr_factor(cfg: MetaTrainConfig, step: jax.Array) -> jax.Array:
  """The meta-learning rate at meta-step ``step`` over ``cfg.meta_learning_rate``.

  1 for ``"constant"``; :math:`\\tfrac12 (1 + \\cos(\\pi s / S))` for ``"cosine"``
  (``S = cfg.num_meta_steps``, clipped at 0 beyond it).
  """
  if cfg.meta_lr_schedule == "constant":
    return jnp.ones((), jnp.float32)
  frac = jnp.minimum(step.astype(jnp.float32) / cfg.num_meta_steps, 1.0)
  return 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def evaluated_phi(state: "TrainState") -> Any:
  """The phi that validation scores: the moving average when kept, else the current phi."""
  return state.phi if state.phi_avg is None else state.phi_avg


def training_rule(phi: Any, config: RuleConfig, imitation: Imitation | None = None
                  ) -> optax.GradientTransformation:
  """The rule meta-training unrolls: the learned rule, run beside Adam when runs may imitate it.

  Its coordinates are flattened per leaf (``flatten_coordinates``): the same updates,
  and a faster meta-gradient on CPU (README, "Speed and memory").
  """
  rule = learned_rule(phi, config, flatten_coordinates=True)
  return rule if imitation is None else imitating(rule, teacher(imitation))


def start_runs(family: ProblemFamily, config: RuleConfig, phi: Any, key: jax.Array,
               batch_size: int, imitation: Imitation | None = None
               ) -> tuple[Task, UnrollState]:
  """Draw ``batch_size`` fresh problems and start a run of the learned rule on each.

  With ``imitation`` (:meth:`MetaTrainConfig.imitation`) each run imitates Adam with
  probability ``imitation.prob``.
  """
  k_tasks, k_runs = jax.random.split(key)
  tasks = jax.vmap(family.sample_task)(jax.random.split(k_tasks, batch_size))
  rule = training_rule(phi, config, imitation)
  runs = jax.vmap(lambda t, k: init_unroll(rule, family, t, k))(
      tasks, jax.random.split(k_runs, batch_size))
  if imitation is not None:
    imitate = jax.random.bernoulli(jax.random.fold_in(key, 1), imitation.prob, (batch_size,))
    opt_state = with_teacher_rates(runs.opt_state._replace(imitate=imitate), imitation,
                                   jax.random.fold_in(key, 2))
    runs = runs._replace(opt_state=opt_state)
  return tasks, runs


def truncated_meta_loss(phi: Any, config: RuleConfig, family: ProblemFamily, tasks: Task,
                        runs: UnrollState, num_steps: int, second_order: bool = False,
                        remat: bool = False, objective: str = "loss",
                        step_weighting: str = "uniform", horizon: int = 100,
                        imitation: Imitation | None = None
                        ) -> tuple[jax.Array, tuple[UnrollState, jax.Array]]:
  """Mean over problems of sum_t w_t f(theta_t) over one unroll of the learned rule.

  The sum runs over the ``num_steps`` losses after each update (theta_{t0+1} ..
  theta_{t0+T}): the loss at theta_{t0} does not depend on this unroll's phi.
  ``objective="log_loss"`` sums log f(theta_t) instead; ``step_weighting`` picks
  w_t from the run step t (``"uniform"``: 1; ``"linear"``: 2t / (horizon + 1)). With
  ``imitation``, a run that imitates Adam contributes ``imitation.weight`` x
  its unroll's imitation error instead (:func:`metaopt.imitation.imitating`). Problems
  are vmapped, or unrolled one after another for families with ``batch_runs = False``
  (:func:`metaopt.unroll.map_runs`).

  Returns:
    ``(meta_loss, (new_runs, losses))``, losses of shape (batch, num_steps + 1).
  """
  rule = training_rule(phi, config, imitation)

  def one(task, run):
    new_run, losses = unroll(rule, family, task, run, num_steps, second_order, remat)
    weights = STEP_WEIGHTINGS[step_weighting](run.step + 1 + jnp.arange(num_steps), horizon)
    total = jnp.sum(weights * META_OBJECTIVES[objective](losses[1:]))
    if imitation is not None:
      error = new_run.opt_state.error - run.opt_state.error
      total = jnp.where(run.opt_state.imitate, imitation.weight * error, total)
    return total, (new_run, losses)

  totals, aux = map_runs(family, one, tasks, runs)
  return jnp.mean(totals), aux


def make_meta_step(config: RuleConfig, cfg: MetaTrainConfig):
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
                                       cfg.unroll_length, cfg.second_order, cfg.remat,
                                       cfg.meta_objective, cfg.step_weighting, cfg.horizon,
                                       cfg.imitation())
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = opt.update(grads, state.meta_opt_state, state.phi)
    updates = optax.tree.scale(meta_lr_factor(cfg, state.step), updates)
    keep = lambda new, old: jnp.where(finite, new, old)
    phi = jax.tree.map(keep, optax.apply_updates(state.phi, updates), state.phi)
    opt_state = jax.tree.map(keep, opt_state, state.meta_opt_state)
    phi_avg = None if state.phi_avg is None else jax.tree.map(
        lambda a, p: a + (1.0 - cfg.phi_average) * (p - a), state.phi_avg, phi)
    new_state = state._replace(phi=phi, meta_opt_state=opt_state, phi_avg=phi_avg,
                               runs=jax.lax.stop_gradient(runs), step=state.step + 1)
    return new_state, {"meta_loss": loss, "grad_norm": grad_norm, "finite": finite}

  return meta_step


def shard_over_devices(state: TrainState, devices=None) -> TrainState:
  """Shard the problem batch of ``state`` across ``devices`` (default: all), replicate phi.

  With more than one device, jit then runs each device's share of the problems
  and XLA reduces the mean meta-gradient across devices; with one device (or a
  batch that does not divide evenly) the state is returned unchanged.
  """
  devices = jax.devices() if devices is None else list(devices)
  batch = jax.tree.leaves(state.runs)[0].shape[0]
  if len(devices) == 1 or batch % len(devices):
    return state
  mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return TrainState(
      phi=jax.device_put(state.phi, replicated),
      meta_opt_state=jax.device_put(state.meta_opt_state, replicated),
      tasks=jax.device_put(state.tasks, split), runs=jax.device_put(state.runs, split),
      key=jax.device_put(state.key, replicated), step=jax.device_put(state.step, replicated),
      phi_avg=jax.device_put(state.phi_avg, replicated))


def init_train_state(family: ProblemFamily, config: RuleConfig, cfg: MetaTrainConfig
                     ) -> TrainState:
  """phi from ``cfg.seed``, a fresh meta-optimizer state and a first batch of runs."""
  k_phi, k_data = jax.random.split(jax.random.key(cfg.seed))
  phi = init_meta_params(config, k_phi)
  k_runs, k_data = jax.random.split(k_data)
  tasks, runs = _jitted_start_runs(family, config, phi, k_runs, cfg.batch_size, cfg.imitation())
  return shard_over_devices(TrainState(phi, meta_optimizer(cfg).init(phi), tasks, runs, k_data,
                                       jnp.zeros((), jnp.int32),
                                       None if cfg.phi_average is None else phi))


_jitted_start_runs = jax.jit(start_runs, static_argnums=(1, 4, 5))


def validation_loss(phi: Any, config: RuleConfig, family: ProblemFamily, tasks: Task,
                    keys: jax.Array, horizon: int, objective: str = "mean",
                    horizon_multiple: int = 1) -> float:
  """The learned rule's validation score: mean loss over problems and steps 1..horizon.

  ``objective="final"`` averages only the last ``min(10, horizon)`` steps instead;
  with ``horizon_multiple`` m the runs last m x ``horizon`` steps and ``"final"``
  averages the last steps before each multiple of ``horizon`` (see
  ``MetaTrainConfig.valid_objective`` and ``valid_horizon_multiple``).
  """
  curves = jitted_loss_curves(rule_factory(config), family,
                              tasks, keys, horizon * horizon_multiple, (phi,))[0]
  return float(VALID_OBJECTIVES[objective](curves[:, 1:], horizon))


class MetaTrainingStopped(RuntimeError):
  """Meta-training stopped early; ``result`` holds the best phi found so far."""

  def __init__(self, message: str, result: "MetaTrainResult"):
    super().__init__(message)
    self.result = result


class _SignalFlag:
  """Turns SIGINT / SIGTERM into a flag checked between meta-steps (main thread only)."""

  def __init__(self, enabled: bool):
    self.enabled = enabled and threading.current_thread() is threading.main_thread()
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if self.enabled:
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Checkpointer:
  """Keeps the ``keep`` newest whole-training-state checkpoints in ``directory``.

  Files are ``step_<meta-step>.ckpt`` written atomically with a checksum; a
  corrupt newest file is reported and the previous good one is used.
  """

  def __init__(self, directory: str | os.PathLike, config: RuleConfig, cfg: MetaTrainConfig,
               keep: int = 2):
    self.directory = pathlib.Path(directory)
    self.keep = keep
    self.identity = _identity(config, cfg)

  def set_aside(self) -> None:
    """Move existing checkpoints to ``<directory>/replaced/`` (a fresh run replaces them)."""
    old = self.paths()
    if old:
      (self.directory / "replaced").mkdir(parents=True, exist_ok=True)
      for path in old:
        path.replace(self.directory / "replaced" / path.name)
      print(f"moved {len(old)} old checkpoint(s) to {self.directory / 'replaced'}", file=sys.stderr)

  def paths(self) -> list[pathlib.Path]:
    """Existing checkpoints, newest first."""
    return sorted(self.directory.glob("step_*.ckpt"), reverse=True)

  def save(self, tree: Any, loop: dict) -> pathlib.Path:
    path = self.directory / f"step_{loop['step']:09d}.ckpt"
    save_tree_checkpoint(path, tree, {**self.identity, "loop": loop})
    for old in self.paths()[self.keep:]:
      old.unlink(missing_ok=True)
    return path

  def restore(self, template: Any) -> tuple[Any, dict] | None:
    for path in self.paths():
      try:
        tree, meta = load_tree_checkpoint(path, template)
      except CorruptCheckpointError as e:
        print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr)
        continue
      stored = _identity(config_from_dict(meta["lstm_config"]), MetaTrainConfig(
          **{**dataclasses.asdict(MetaTrainConfig()), **meta["meta_train_config"]}))
      for key, value in self.identity.items():
        if stored[key] != value:
          diff = {k: (stored[key].get(k), v) for k, v in value.items() if stored[key].get(k) != v}
          raise ValueError(f"checkpoint {path} was made for another configuration; "
                           + ", ".join(f"{k}: checkpoint has {a!r}, this run has {b!r}"
                                       for k, (a, b) in diff.items()))
      return tree, meta["loop"]
    return None


def _identity(config: RuleConfig, cfg: MetaTrainConfig) -> dict:
  """The settings a resumed run must share with its checkpoint (all but length and logging).

  Plain JSON; settings added in later versions take their defaults when a
  checkpoint predates them.
  """
  d = dataclasses.asdict(cfg)
  for field in ("num_meta_steps", "checkpoint_every", "max_consecutive_nonfinite"):
    d.pop(field)
  return json.loads(json.dumps({"lstm_config": config.to_dict(), "meta_train_config": d}))


def meta_train(family: ProblemFamily, config: RuleConfig, cfg: MetaTrainConfig,
               progress: bool = True, checkpoint_dir: str | os.PathLike | None = None,
               resume: bool = False, valid_family: ProblemFamily | None = None
               ) -> MetaTrainResult:
  """Meta-train the learned rule on ``family`` by truncated BPTT with early stopping.

  With ``checkpoint_dir``, the whole training state (phi, meta-optimizer state,
  PRNG key, step, best phi and its score, the in-flight problems, optimizee
  parameters and LSTM states, and the history) is written every
  ``cfg.checkpoint_every`` meta-steps and when SIGINT/SIGTERM arrives; with
  ``resume=True`` training continues from the newest good checkpoint and ends
  with exactly the phi of an uninterrupted run.

  Args:
    family: the problem family to sample training and validation problems from.
    config: the rule's configuration (one LSTM or one per group).
    cfg: meta-training settings.
    progress: show a tqdm bar with the meta-loss and validation loss.
    checkpoint_dir: where to keep checkpoints (None: no checkpoints).
    resume: continue from the newest good checkpoint in ``checkpoint_dir``.
    valid_family: where validation problems come from (default ``family``), e.g. the
      plain problems when ``family`` is augmented (:class:`metaopt.problems.AugmentedFamily`).

  Returns:
    A :class:`MetaTrainResult` whose ``phi`` is the best on validation (with a
    curriculum: the best at the last stage reached).

  Raises:
    MetaTrainingStopped: ``cfg.max_consecutive_nonfinite`` non-finite meta-steps
      in a row; its ``result`` keeps the best phi so far.

  Example:
    >>> result = meta_train(QuadraticFamily(), LSTMConfig(), MetaTrainConfig(num_meta_steps=50))
    >>> opt = learned_rule(result.phi, LSTMConfig())
  """
  # SIGINT/SIGTERM are caught from the start (compilation included) and acted on
  # after the current meta-step: checkpoint, then exit.
  with _SignalFlag(checkpoint_dir is not None) as interrupted:
    return _meta_train(family, valid_family or family, config, cfg, progress, checkpoint_dir,
                       resume, interrupted)


def _meta_train(family, valid_family, config, cfg, progress, checkpoint_dir, resume, interrupted):
  start = time.perf_counter()
  horizons = cfg.horizons()
  valid_tasks, valid_keys = sample_tasks(
      valid_family, jax.random.fold_in(jax.random.key(cfg.seed), 1_000_003),
      cfg.num_valid_problems)
  meta_step = make_meta_step(config, cfg)
  state = init_train_state(family, config, cfg)
  best_phi = evaluated_phi(state)
  loop = {"step": 0, "unrolls_done": 0, "best_valid": None, "num_skipped": 0,
          "consecutive_nonfinite": 0, "stage": 0, "stalls": 0,
          "history": {"meta_loss": [], "valid_step": [], "valid_loss": [], "restored_at": [],
                      "valid_horizon": [], "stage_start": []}}
  checkpointer = Checkpointer(checkpoint_dir, config, cfg) if checkpoint_dir else None
  if checkpointer is not None and not resume:
    checkpointer.set_aside()
  if resume:
    if checkpointer is None:
      raise ValueError("meta_train: resume=True needs a checkpoint_dir")
    restored = checkpointer.restore({"train": state, "best_phi": best_phi})
    if restored is not None:
      (tree, loop) = restored
      state, best_phi = shard_over_devices(tree["train"]), tree["best_phi"]
      print(f"resumed from meta-step {loop['step']} ({checkpointer.directory})", file=sys.stderr)
  loop.setdefault("stage", 0)      # checkpoints from before curricula
  loop.setdefault("stalls", 0)
  loop.setdefault("seconds", 0.0)  # wall time before this (resumed) run; 0 in older checkpoints
  seconds_before = loop["seconds"]
  elapsed = lambda: seconds_before + time.perf_counter() - start
  history = loop["history"]
  for name in ("valid_horizon", "stage_start"):
    history.setdefault(name, [])
  unrolls_per_run = lambda: horizons[loop["stage"]] // cfg.unroll_length

  def validate(phi, step):
    loss = validation_loss(phi, config, valid_family, valid_tasks, valid_keys,
                           horizons[loop["stage"]], cfg.valid_objective,
                           cfg.valid_horizon_multiple)
    history["valid_step"].append(step)
    history["valid_loss"].append(loss)
    history["valid_horizon"].append(horizons[loop["stage"]])
    return loss

  if loop["best_valid"] is None:
    loop["best_valid"] = validate(evaluated_phi(state), 0)

  def restart_from(phi):
    """phi (and its average) set to ``phi`` with a fresh meta-optimizer state."""
    return state._replace(phi=phi, meta_opt_state=meta_optimizer(cfg).init(phi),
                          phi_avg=None if state.phi_avg is None else phi)

  def result(phi_last):
    return MetaTrainResult(best_phi, loop["best_valid"], phi_last, history, loop["num_skipped"],
                           elapsed())

  def save():
    loop["seconds"] = elapsed()
    if checkpointer is not None:
      checkpointer.save({"train": state, "best_phi": best_phi}, loop)

  bar = tqdm.tqdm(range(loop["step"], cfg.num_meta_steps), initial=loop["step"],
                  total=cfg.num_meta_steps, disable=not progress, desc="meta-train")
  for i in bar:
    if loop["unrolls_done"] >= unrolls_per_run():  # the runs have ended: fresh problems
      k_runs, k_next = jax.random.split(state.key)
      tasks, runs = _jitted_start_runs(family, config, state.phi, k_runs, cfg.batch_size,
                                       cfg.imitation())
      state = shard_over_devices(state._replace(tasks=tasks, runs=runs, key=k_next))
      loop["unrolls_done"] = 0
    state, metrics = meta_step(family, state)
    loop["unrolls_done"] += 1
    loss = float(metrics["meta_loss"])
    history["meta_loss"].append(loss)
    if bool(metrics["finite"]):
      loop["consecutive_nonfinite"] = 0
    else:
      loop["num_skipped"] += 1
      loop["consecutive_nonfinite"] += 1
      loop["unrolls_done"] = unrolls_per_run()  # the runs may hold non-finite values: restart
    if (i + 1) % cfg.valid_every == 0 or i + 1 == cfg.num_meta_steps:
      valid = validate(evaluated_phi(state), i + 1)
      if valid < loop["best_valid"]:
        best_phi, loop["best_valid"], loop["stalls"] = evaluated_phi(state), valid, 0
      else:
        loop["stalls"] += 1
        if cfg.collapse_factor is not None and not valid <= cfg.collapse_factor * loop["best_valid"]:
          state = restart_from(best_phi)
          history["restored_at"].append(i + 1)
        if loop["stalls"] >= cfg.curriculum_patience and loop["stage"] + 1 < len(horizons):
          # Validation stopped improving: the next, longer horizon, from the best phi.
          loop["stage"], loop["stalls"] = loop["stage"] + 1, 0
          state = restart_from(best_phi)
          loop["unrolls_done"] = unrolls_per_run()  # fresh problems at the new horizon
          history["stage_start"].append(i + 1)
          loop["best_valid"] = validate(best_phi, i + 1)
    loop["step"] = i + 1
    bar.set_postfix(horizon=horizons[loop["stage"]], meta_loss=f"{loss:.4g}",
                    valid=f"{history['valid_loss'][-1]:.4g}",
                    best=f"{loop['best_valid']:.4g}", skipped=loop["num_skipped"],
                    restored=len(history["restored_at"]))
    if interrupted.signum is not None or (i + 1) % cfg.checkpoint_every == 0:
      save()
    if interrupted.signum is not None:
      bar.close()
      print(f"meta-training interrupted by signal {interrupted.signum} at meta-step {i + 1}; "
            f"checkpoint saved in {checkpointer.directory}", file=sys.stderr)
      if interrupted.signum == signal.SIGINT:
        raise KeyboardInterrupt
      raise SystemExit(128 + interrupted.signum)
    if loop["consecutive_nonfinite"] >= cfg.max_consecutive_nonfinite:
      save()
      raise MetaTrainingStopped(
          f"meta-training stopped at meta-step {i + 1}: {loop['consecutive_nonfinite']} "
          f"non-finite meta-losses or meta-gradients in a row (max_consecutive_nonfinite="
          f"{cfg.max_consecutive_nonfinite}); the best phi so far (validation loss "
          f"{loop['best_valid']:.4g}) is kept in the exception's result",
          result(evaluated_phi(state)))
  save()
  jax.block_until_ready(best_phi)
  return result(evaluated_phi(state))
