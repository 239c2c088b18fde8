"""The meta-training loop: meta-steps, validation, early stopping, checkpoints, signals.

.. math:: \\phi \\leftarrow \\phi + \\text{meta-optimizer}(\\hat\\nabla_\\phi L)

where :math:`\\hat\\nabla_\\phi L` comes from a meta-gradient estimator
(:mod:`metaopt.estimators`; default: truncated backprop through the runs' unrolls),
runs follow the truncation schedule (:mod:`metaopt.truncation`) and a non-finite
meta-gradient skips the update (``optax.apply_if_finite``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from typing import Any

import jax
import optax

from metaopt import distributed
from metaopt.config import MetaTrainConfig
from metaopt.distributed import Placement
from metaopt.estimators import MetaGradientEstimator
from metaopt.host import ProgressLine, SignalFlag
from metaopt.meta_step import prepare
from metaopt.networks import RuleConfig
from metaopt.problems.base import ProblemFamily
from metaopt.train_checkpoint import TrainCheckpointer
from metaopt.train_records import MetaTrainingStopped, MetaTrainResult, Progress
from metaopt.unroll import sample_tasks
from metaopt.validation import VALIDATION_SET, validation_score


def meta_train(family: ProblemFamily, config: RuleConfig, cfg: MetaTrainConfig,
               meta_optimizer: optax.GradientTransformation | None = None,
               estimator: MetaGradientEstimator | None = None,
               valid_family: ProblemFamily | None = None,
               checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 100,
               resume: bool = False, max_consecutive_nonfinite: int = 20,
               progress: bool = True) -> MetaTrainResult:
  """Meta-train a learned rule on ``family`` with validation-based early stopping.

  With ``checkpoint_dir``, the whole training state (phi, meta-optimizer state, PRNG
  key, runs in flight, best phi, counters and history) is saved with orbax every
  ``checkpoint_every`` meta-steps and when SIGINT/SIGTERM arrives; ``resume=True``
  continues from the newest good checkpoint and ends with exactly the phi of an
  uninterrupted run.

  Under ``jax.distributed`` (:func:`metaopt.distributed.initialize`) every process
  calls it with the same arguments: the problems of each meta-step and of validation
  are split over one mesh of all processes' devices (each process draws only its
  own, the batch one process would draw), phi and the meta-optimizer state are
  replicated, process 0 alone shows progress, and checkpoints are saved and
  restored by all processes together (a run may resume on another number of
  processes). The result's phi are then copies on each process's first device.

  Args:
    family: the problem family meta-training samples from.
    config: the learned rule's configuration.
    cfg: meta-training settings.
    meta_optimizer: any optax transformation for phi (default: ``cfg.meta_optimizer()``,
      clipped Adam); it is wrapped in ``optax.apply_if_finite``.
    estimator: the meta-gradient estimator (default: :class:`TruncatedBackprop` from ``cfg``).
    valid_family: where validation problems come from (default ``family``).
    checkpoint_dir: where to keep checkpoints (None: none).
    checkpoint_every: meta-steps between checkpoints.
    resume: continue from ``checkpoint_dir``; raises if no checkpoint there can be read.
    max_consecutive_nonfinite: stop after this many non-finite meta-steps in a row.
    progress: show progress (a redrawn line on a terminal, a line per validation in a log).

  Returns:
    A :class:`MetaTrainResult`; its ``phi`` is the best on validation (with a
    curriculum: the best at the last stage reached).

  Raises:
    MetaTrainingStopped: too many non-finite meta-steps in a row; ``result`` keeps the
      best phi so far.
    metaopt.train_checkpoint.CheckpointError: ``resume`` without a readable checkpoint, or
      one made for another configuration (the differing fields are named).
    metaopt.distributed.PeerFailure: across processes, a collective failed (another
      process died); restart all processes with ``resume=True``.

  Example:
    >>> result = meta_train(QuadraticFamily(), LSTMConfig(), MetaTrainConfig(num_meta_steps=50))
    >>> opt = learned_rule(result.phi, LSTMConfig())
  """
  if resume and checkpoint_dir is None:
    raise ValueError("meta_train: resume=True needs a checkpoint_dir")
  start = time.perf_counter()
  # SIGINT/SIGTERM are caught from the start (compilation included) and acted on after
  # the current meta-step: checkpoint, then exit.
  with SignalFlag(checkpoint_dir is not None) as interrupted:
    placement = Placement()
    prepared = prepare(family, config, cfg, meta_optimizer, estimator, placement)
    identity = {"rule": config.to_dict(),
                "meta_train": {k: v for k, v in cfg.to_dict().items() if k != "num_meta_steps"},
                "estimator": type(prepared.estimator).__name__,
                "meta_optimizer": "default" if meta_optimizer is None else "custom"}
    checkpointer = None if checkpoint_dir is None else TrainCheckpointer(checkpoint_dir,
                                                                         identity)
    loop = _Loop(family, valid_family or family, config, cfg, prepared, placement, checkpointer,
                 checkpoint_every, max_consecutive_nonfinite, progress)
    loop.start = start
    return loop.run(resume, interrupted)


class _Loop:
  """One meta-training run on the host: the state of :func:`meta_train` between meta-steps."""

  def __init__(self, family, valid_family, config, cfg, prepared, placement, checkpointer,
               checkpoint_every, max_consecutive_nonfinite, progress):
    self.placement = placement
    self.family, self.valid_family = placement.put(family), placement.put(valid_family)
    self.config, self.cfg = config, cfg
    self.optimizer, self.meta_step = prepared.optimizer, prepared.meta_step
    self.start_runs = placement.split_outputs(prepared.estimator.start_runs)
    self.state, self.checkpointer = prepared.state, checkpointer
    self.checkpoint_every, self.max_nonfinite = checkpoint_every, max_consecutive_nonfinite
    self.start = time.perf_counter()
    valid_key = jax.random.fold_in(jax.random.key(cfg.seed), VALIDATION_SET)
    n = cfg.validation.num_problems
    if placement.multi_process:  # each process draws only its own validation problems
      draw = placement.split_outputs(lambda fam, key: sample_tasks(fam, key, n))
      self.valid_tasks, self.valid_keys = draw(self.valid_family, placement.put(valid_key))
    else:
      self.valid_tasks, self.valid_keys = placement.split(sample_tasks(valid_family, valid_key, n))
    self.best_phi = self.evaluated_phi()
    self.p = Progress()
    self.main = distributed.is_main_process()
    self.bar = ProgressLine("meta-train", cfg.num_meta_steps, enabled=progress and self.main)

  def evaluated_phi(self) -> Any:
    """The phi validation scores: the moving average when kept, else phi."""
    return self.state.phi if self.state.phi_avg is None else self.state.phi_avg

  def horizon(self) -> int:
    return self.cfg.truncation.horizons()[self.p.stage]

  def elapsed(self) -> float:
    return self.p.seconds + time.perf_counter() - self.start

  def validate(self, phi: Any, step: int) -> float:
    with distributed.failures_named(f"validation at meta-step {step}"):
      score = validation_score(phi, self.config, self.valid_family, self.valid_tasks,
                               self.valid_keys, self.horizon(), self.cfg.validation)
    h = self.p.history
    h.valid_step.append(step), h.valid_loss.append(score), h.valid_horizon.append(self.horizon())
    return score

  def restart_from(self, phi: Any) -> None:
    """phi (and its average) set to ``phi``, with a fresh meta-optimizer state."""
    self.state = self.placement.place(self.state._replace(
        phi=phi, opt_state=self.optimizer.init(phi),
        phi_avg=None if self.state.phi_avg is None else phi))

  def save(self) -> None:
    if self.checkpointer is not None:
      info = dataclasses.asdict(dataclasses.replace(self.p, seconds=self.elapsed()))
      with distributed.failures_named(f"the checkpoint of meta-step {self.p.step}"):
        self.checkpointer.save(self.p.step, {"train": self.state, "best_phi": self.best_phi},
                               info)

  def result(self) -> MetaTrainResult:
    phi, final_phi = self.best_phi, self.evaluated_phi()
    if self.placement.multi_process:  # usable by one process alone (save, evaluate)
      phi, final_phi = distributed.local_copy((phi, final_phi))
    return MetaTrainResult(phi, self.p.best_valid, final_phi, self.p.history,
                           self.p.num_skipped, self.elapsed())

  def run(self, resume: bool, interrupted: SignalFlag) -> MetaTrainResult:
    if self.checkpointer is not None and not resume:
      self.checkpointer.set_aside()
    if resume:
      tree, info = self.checkpointer.restore({"train": self.state, "best_phi": self.best_phi})
      self.state = self.placement.place(tree["train"])
      self.best_phi = self.placement.put(tree["best_phi"])
      self.p = Progress.from_dict(info)
      self.start = time.perf_counter()
      if self.main:
        print(f"resumed from meta-step {self.p.step} ({self.checkpointer.directory})",
              file=sys.stderr)
    else:
      self.state = self.placement.place(self.state)
    if self.p.best_valid is None:
      self.p.best_valid = self.validate(self.evaluated_phi(), 0)
    for i in range(self.p.step, self.cfg.num_meta_steps):
      validated = self.meta_step_and_validate(i)
      self.p.step = i + 1
      h = self.p.history
      self.bar.update(i + 1, force=validated, horizon=self.horizon(), meta_loss=h.meta_loss[-1],
                      valid=h.valid_loss[-1], best=self.p.best_valid, skipped=self.p.num_skipped)
      # Across processes all stop at the same meta-step when any of them got the signal.
      signum = interrupted.signum
      if interrupted.enabled and self.placement.multi_process:
        with distributed.failures_named(f"meta-step {i + 1}"):
          stop = distributed.any_process(signum is not None)
        signum = (signum or signal.SIGTERM) if stop else None
      if signum is not None or (i + 1) % self.checkpoint_every == 0:
        self.save()
      if signum is not None:
        self.bar.close()
        if self.main:
          print(f"meta-training interrupted by signal {signum} at meta-step {i + 1}; "
                f"checkpoint saved in {self.checkpointer.directory}", file=sys.stderr)
        if signum == signal.SIGINT:
          raise KeyboardInterrupt
        raise SystemExit(128 + signum)
      if self.p.consecutive_nonfinite >= self.max_nonfinite:
        self.save()
        self.bar.close()
        raise MetaTrainingStopped(
            f"meta-training stopped at meta-step {i + 1}: {self.p.consecutive_nonfinite} "
            f"non-finite meta-losses or meta-gradients in a row (max_consecutive_nonfinite="
            f"{self.max_nonfinite}); the best phi so far (validation score "
            f"{self.p.best_valid:.4g}) is kept in the exception's result", self.result())
    self.save()
    self.bar.close()
    jax.block_until_ready(self.best_phi)
    return self.result()

  def meta_step_and_validate(self, i: int) -> bool:
    """Meta-step ``i`` (fresh runs first when the current ones ended); validate if due."""
    p, truncation = self.p, self.cfg.truncation
    with distributed.failures_named(f"meta-step {i + 1}"):
      if p.unrolls_done >= truncation.unrolls_per_run(p.stage):
        k_runs, k_next = jax.random.split(self.state.key)
        runs = self.start_runs(self.state.phi, self.family, k_runs)
        self.state = self.placement.place(self.state._replace(runs=runs, key=k_next))
        p.unrolls_done = 0
      self.state, metrics = self.meta_step(self.family, self.state)
      meta_loss, finite = float(metrics["meta_loss"]), bool(metrics["finite"])
    p.unrolls_done += 1
    p.history.meta_loss.append(meta_loss)
    if finite:
      p.consecutive_nonfinite = 0
    else:
      p.num_skipped += 1
      p.consecutive_nonfinite += 1
      p.unrolls_done = truncation.unrolls_per_run(p.stage)  # runs may be non-finite: restart
    if not ((i + 1) % self.cfg.validation.every == 0 or i + 1 == self.cfg.num_meta_steps):
      return False
    score = self.validate(self.evaluated_phi(), i + 1)
    if score < p.best_valid:
      self.best_phi, p.best_valid, p.stalls = self.evaluated_phi(), score, 0
      return True
    p.stalls += 1
    if self.cfg.validation.collapsed(score, p.best_valid):
      self.restart_from(self.best_phi)
      p.history.restored_at.append(i + 1)
    stage = truncation.next_stage(p.stage, p.stalls)
    if stage != p.stage:  # validation stopped improving: a longer horizon, from the best phi
      p.stage, p.stalls = stage, 0
      self.restart_from(self.best_phi)
      p.unrolls_done = truncation.unrolls_per_run(stage)  # fresh runs at the new horizon
      p.history.stage_start.append(i + 1)
      p.best_valid = self.validate(self.best_phi, i + 1)
    return True
