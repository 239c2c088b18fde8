"""Random quadratics f(theta) = ||W theta - y||^2 (the paper's section 3.1)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


class QuadraticTask(NamedTuple):
  """One quadratic: ``W`` of shape (dim, dim) and ``y`` of shape (dim,)."""

  w: jax.Array
  y: jax.Array


class QuadraticFamily(struct.PyTreeNode):
  """f(theta) = ||W theta - y||^2 with W, y i.i.d. N(0, 1) (the paper).

  Attributes:
    dim: the dimension of theta, W and y (paper: 10).
    init_scale: theta_0 ~ N(0, init_scale^2) i.i.d. (the official code: 0.01).
    run_mode: how evaluation maps its runs (:func:`metaopt.unroll.map_runs`): ``"vmap"``.

  Example:
    >>> fam = QuadraticFamily()
    >>> task = fam.sample_task(jax.random.key(0))
    >>> params, state = fam.init(task, jax.random.key(1))
    >>> loss, state = fam.loss(params, state, task, jax.random.key(2))
  """

  dim: int = struct.field(pytree_node=False, default=10)
  init_scale: float = struct.field(pytree_node=False, default=0.01)
  run_mode: str = struct.field(pytree_node=False, default="vmap")

  def sample_task(self, key: jax.Array) -> QuadraticTask:
    """Draw W and y with i.i.d. standard normal entries."""
    k_w, k_y = jax.random.split(key)
    return QuadraticTask(
        w=jax.random.normal(k_w, (self.dim, self.dim)),
        y=jax.random.normal(k_y, (self.dim,)),
    )

  def init(self, task: QuadraticTask, key: jax.Array):
    """theta_0 ~ N(0, init_scale^2); no model state."""
    del task
    return self.init_scale * jax.random.normal(key, (self.dim,)), ()

  def loss(self, params, model_state, task: QuadraticTask, key: jax.Array):
    """||W theta - y||^2 (deterministic: ``key`` is unused)."""
    del key
    residual = task.w @ params - task.y
    return jnp.sum(residual ** 2), model_state
