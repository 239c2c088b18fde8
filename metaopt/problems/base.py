"""The problem-family protocol every optimizee goes through.

A *family* is a pytree (``flax.struct.PyTreeNode``): its static fields are
hyper-parameters, its array fields are data kept on the device (e.g. a training
set), so it can be passed to jitted functions as an argument. A *task* is one
sampled problem (a pytree of arrays, vmappable over a batch of tasks).

Loss functions take a PRNG key so that minibatches are drawn inside the
unroll's ``lax.scan``, and carry a *model state* (e.g. batch-norm statistics)
that is not optimized; families without one use ``()``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

Params = Any
ModelState = Any
Task = Any


class ProblemFamily(Protocol):
  """Protocol of a family of optimization problems.

  ``run_mode`` says how a batch of its runs is mapped (:func:`metaopt.unroll.map_runs`):
  ``"vmap"`` (batched), or ``"map"`` (one after another in a loop) when its batched
  ops are slow, e.g. convolutions with a kernel per run on CPU.
  """

  run_mode: str

  def sample_task(self, key: jax.Array) -> Task:
    """Draw one problem (e.g. a random quadratic) from the family."""

  def init(self, task: Task, key: jax.Array) -> tuple[Params, ModelState]:
    """Initial optimizee parameters theta_0 and model state for ``task``."""

  def loss(self, params: Params, model_state: ModelState, task: Task,
           key: jax.Array) -> tuple[jax.Array, ModelState]:
    """Scalar loss f(theta) (on a minibatch drawn with ``key``) and the new model state."""
