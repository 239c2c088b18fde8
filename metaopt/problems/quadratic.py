"""Random quadratics f(theta) = ||W theta - y||^2 (the paper's section 3.1).

By default W and y are i.i.d. N(0, 1) (the paper). Two optional fields give the
task suite (:mod:`metaopt.problems.suite`) quadratics of controlled difficulty:
``condition_number`` (of the Hessian 2 W^T W) and ``distance`` (from the origin,
where theta_0 starts, to the minimizer).
"""

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
    condition_number: None (the paper's W); else ``W = diag(s) Q^T`` with ``Q`` a random
      orthogonal matrix and singular values ``s`` log-spaced from 1 down to
      ``condition_number ** -0.5``, so the Hessian ``2 W^T W`` has exactly this condition number.
    distance: None (the paper's y ~ N(0, 1)); else ``y = W theta*`` with ``theta*`` uniform on
      the sphere of this radius: the minimum is 0, at this distance from the origin.

  Example:
    >>> fam = QuadraticFamily()
    >>> task = fam.sample_task(jax.random.key(0))
    >>> params, state = fam.init(task, jax.random.key(1))
    >>> loss, state = fam.loss(params, state, task, jax.random.key(2))
    >>> hard = QuadraticFamily(dim=20, condition_number=1e3, distance=5.0)
  """

  dim: int = struct.field(pytree_node=False, default=10)
  init_scale: float = struct.field(pytree_node=False, default=0.01)
  run_mode: str = struct.field(pytree_node=False, default="vmap")
  condition_number: float | None = struct.field(pytree_node=False, default=None)
  distance: float | None = struct.field(pytree_node=False, default=None)

  def __post_init__(self):
    if self.condition_number is not None and not self.condition_number >= 1:
      raise ValueError(f"QuadraticFamily.condition_number must be None or >= 1, got "
                       f"{self.condition_number!r}")
    if self.distance is not None and not self.distance >= 0:
      raise ValueError(f"QuadraticFamily.distance must be None or >= 0, got {self.distance!r}")

  def sample_task(self, key: jax.Array) -> QuadraticTask:
    """Draw W and y (i.i.d. standard normal entries unless conditioned / placed)."""
    k_w, k_y = jax.random.split(key)
    if self.condition_number is None and self.distance is None:
      return QuadraticTask(
          w=jax.random.normal(k_w, (self.dim, self.dim)),
          y=jax.random.normal(k_y, (self.dim,)),
      )
    w = jax.random.normal(k_w, (self.dim, self.dim))
    if self.condition_number is not None:
      q, _ = jnp.linalg.qr(w)
      s = jnp.float32(self.condition_number) ** (-0.5 * jnp.linspace(0.0, 1.0, self.dim))
      w = s[:, None] * q.T
    if self.distance is None:
      y = jax.random.normal(k_y, (self.dim,))
    else:
      direction = jax.random.normal(k_y, (self.dim,))
      y = w @ (self.distance * direction / jnp.linalg.norm(direction))
    return QuadraticTask(w=w, y=y)

  def init(self, task: QuadraticTask, key: jax.Array):
    """theta_0 ~ N(0, init_scale^2); no model state."""
    del task
    return self.init_scale * jax.random.normal(key, (self.dim,)), ()

  def loss(self, params, model_state, task: QuadraticTask, key: jax.Array):
    """||W theta - y||^2 (deterministic: ``key`` is unused)."""
    del key
    residual = task.w @ params - task.y
    return jnp.sum(residual ** 2), model_state
