"""The n-dimensional Rosenbrock function: a curved, badly conditioned non-convex valley.

.. math::
   f(\\theta) = \\sum_{i=1}^{n-1} a\\,(\\theta_{i+1} - \\theta_i^2)^2 + (1 - \\theta_i)^2

(a = 100 is the classic), minimum 0 at theta = (1, ..., 1). Each task draws ``a``
log-uniformly from ``coef_range``; each run starts uniformly in
``[-init_range, init_range]^n``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


class RosenbrockTask(NamedTuple):
  """One Rosenbrock function: its valley coefficient ``a`` (a scalar)."""

  coef: jax.Array


class RosenbrockFamily(struct.PyTreeNode):
  """Rosenbrock functions of ``dim`` variables with random valley steepness and start.

  Attributes:
    dim: n >= 2.
    coef_range: (lo, hi): ``a`` is log-uniform in it per task.
    init_range: theta_0 ~ U[-init_range, init_range]^n per run.
    run_mode: ``"vmap"`` (:func:`metaopt.unroll.map_runs`).

  Example:
    >>> fam = RosenbrockFamily(dim=5)
    >>> task = fam.sample_task(jax.random.key(0))
    >>> params, state = fam.init(task, jax.random.key(1))
    >>> loss, state = fam.loss(params, state, task, jax.random.key(2))
  """

  dim: int = struct.field(pytree_node=False, default=2)
  coef_range: tuple[float, float] = struct.field(pytree_node=False, default=(10.0, 100.0))
  init_range: float = struct.field(pytree_node=False, default=2.0)
  run_mode: str = struct.field(pytree_node=False, default="vmap")

  def __post_init__(self):
    lo, hi = self.coef_range
    if not (self.dim >= 2 and 0 < lo <= hi and self.init_range > 0):
      raise ValueError(f"RosenbrockFamily needs dim >= 2, 0 < lo <= hi and init_range > 0; got "
                       f"dim={self.dim}, coef_range={self.coef_range}, "
                       f"init_range={self.init_range}")

  def sample_task(self, key: jax.Array) -> RosenbrockTask:
    """``a`` log-uniform in ``coef_range``."""
    lo, hi = (jnp.log(jnp.float32(c)) for c in self.coef_range)
    return RosenbrockTask(jnp.exp(jax.random.uniform(key, (), jnp.float32, lo, hi)))

  def init(self, task: RosenbrockTask, key: jax.Array):
    """theta_0 ~ U[-init_range, init_range]^n; no model state."""
    del task
    return jax.random.uniform(key, (self.dim,), jnp.float32, -self.init_range,
                              self.init_range), ()

  def loss(self, params, model_state, task: RosenbrockTask, key: jax.Array):
    """f(theta) (deterministic: ``key`` is unused)."""
    del key
    x, x_next = params[:-1], params[1:]
    return (jnp.sum(task.coef * jnp.square(x_next - jnp.square(x)) + jnp.square(1.0 - x)),
            model_state)
