"""Meta-training on several task types at once: normalized losses and joint problems.

Losses of different task types differ by orders of magnitude (a quadratic's starts
near 100, a classifier's near 2.3), so a meta-objective summed over them would
only see the largest. :class:`NormalizedFamily` divides a family's loss by its
value at theta_0 (a constant per run, kept in the model state), so every run
starts at 1; :class:`JointFamily` makes one problem of one instance of each of
several families, with the mean of their losses. Its parameters are the tuple of
theirs and the loss is separable, so a per-coordinate rule optimizing the joint
problem optimizes each part as it would alone (each part's gradient is its own,
times the constant 1 / (n f_0)); the runs of a meta-step then cover every task
type, in one compiled program.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


class NormalizedState(NamedTuple):
  """The base family's model state and the run's initial loss f(theta_0)."""

  base: Any
  initial_loss: jax.Array


class NormalizedFamily(struct.PyTreeNode):
  """``base`` with its loss divided by its value at theta_0: :math:`f(\\theta) / f(\\theta_0)`.

  The initial loss is evaluated once per run, on the minibatch of the run's init key,
  and held (gradient stopped) in the model state.

  Example:
    >>> fam = NormalizedFamily(QuadraticFamily())
    >>> params, state = fam.init(fam.sample_task(key), key)   # loss at params is 1
  """

  base: Any

  @property
  def run_mode(self) -> str:
    """The base family's run mode."""
    return self.base.run_mode

  def sample_task(self, key: jax.Array) -> Any:
    """A task of the base family."""
    return self.base.sample_task(key)

  def init(self, task: Any, key: jax.Array) -> tuple[Any, NormalizedState]:
    """The base family's theta_0 and model state, and f(theta_0)."""
    params, state = self.base.init(task, key)
    f0, _ = self.base.loss(params, state, task, key)
    floor = jnp.finfo(jnp.float32).tiny
    return params, NormalizedState(state, jax.lax.stop_gradient(jnp.maximum(f0, floor)))

  def loss(self, params: Any, model_state: NormalizedState, task: Any, key: jax.Array
           ) -> tuple[jax.Array, NormalizedState]:
    """:math:`f(\\theta) / f(\\theta_0)` and the new model state."""
    value, base_state = self.base.loss(params, model_state.base, task, key)
    return value / model_state.initial_loss, NormalizedState(base_state, model_state.initial_loss)


class JointFamily(struct.PyTreeNode):
  """One problem made of one instance of each family: the mean of their losses.

  Attributes:
    families: the parts (e.g. :class:`NormalizedFamily` of each task type).
    run_mode: how a batch of joint runs is mapped (``"map"`` if any part needs it).

  Example:
    >>> fam = JointFamily((NormalizedFamily(QuadraticFamily()), NormalizedFamily(mlp)))
    >>> params, state = fam.init(fam.sample_task(key), key)   # params: (theta_quad, theta_mlp)
  """

  families: tuple[Any, ...]

  @property
  def run_mode(self) -> str:
    """``"map"`` when a part maps its runs, else ``"vmap"``."""
    return "map" if any(f.run_mode == "map" for f in self.families) else "vmap"

  def sample_task(self, key: jax.Array) -> tuple[Any, ...]:
    """A task of every part (keys folded in by part)."""
    return tuple(f.sample_task(jax.random.fold_in(key, i)) for i, f in enumerate(self.families))

  def init(self, task: tuple[Any, ...], key: jax.Array) -> tuple[tuple, tuple]:
    """Every part's theta_0 and model state."""
    parts = [f.init(t, jax.random.fold_in(key, i))
             for i, (f, t) in enumerate(zip(self.families, task))]
    return tuple(p for p, _ in parts), tuple(s for _, s in parts)

  def loss(self, params: tuple, model_state: tuple, task: tuple, key: jax.Array
           ) -> tuple[jax.Array, tuple]:
    """The mean of the parts' losses, each on its own minibatch key."""
    out = [f.loss(p, s, t, jax.random.fold_in(key, i))
           for i, (f, p, s, t) in enumerate(zip(self.families, params, model_state, task))]
    return jnp.mean(jnp.stack([v for v, _ in out])), tuple(s for _, s in out)

