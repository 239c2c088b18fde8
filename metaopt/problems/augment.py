"""Meta-training augmentation: random parameter scaling and random convex terms.

Lv et al. (2017), "Learning gradient descent: better generalization and longer
horizons", train RNNprop on problems whose parameters are randomly rescaled and
to which a random convex function is added, so that the learned rule cannot
memorize the scale of one problem's parameters and gradients. Here, for a base
problem f and per-coordinate factors ``c = exp(u)``, ``u ~ U[-s, s]``:

.. math::
   \\tilde f(\\theta) = f(c \\odot \\theta) + [\\text{with prob. } p]\\;
   \\frac{\\lambda}{2} \\lVert \\theta - \\xi \\rVert^2, \\qquad
   \\tilde\\theta_0 = \\theta_0 / c

with ``log lambda ~ U[log lo, log hi]`` and ``xi ~ N(0, sigma^2)``, so the
augmented run starts at the same point of the base problem. Only used for
meta-training: validation and evaluation run the plain problems.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


class AugmentedTask(NamedTuple):
  """A base task plus its random per-coordinate log-scales and convex term."""

  task: Any
  log_scale: Any          # tree like the params
  quad_weight: jax.Array  # lambda (0 when the run has no convex term)
  quad_center: Any        # xi, tree like the params


class AugmentedFamily(struct.PyTreeNode):
  """Wraps any problem family with random scaling and a random convex quadratic.

  Attributes:
    base: the family to augment (any :class:`metaopt.problems.ProblemFamily`).
    max_log_scale: s: per-coordinate scale factors ``exp(U[-s, s])`` (0 disables).
    convex_prob: p: probability that a problem gets the convex term (0 disables).
    convex_weight_range: (lo, hi): lambda is log-uniform in it.
    convex_center_std: sigma: std of the quadratic's centre xi.

  Example:
    >>> fam = AugmentedFamily(MLPFamily.from_dataset(ds), max_log_scale=1.0, convex_prob=0.5)
    >>> result = meta_train(fam, config, cfg, valid_family=fam.base)
  """

  base: Any
  max_log_scale: float = struct.field(pytree_node=False, default=1.0)
  convex_prob: float = struct.field(pytree_node=False, default=0.5)
  convex_weight_range: tuple[float, float] = struct.field(pytree_node=False,
                                                          default=(1e-4, 1e-2))
  convex_center_std: float = struct.field(pytree_node=False, default=0.1)

  def __post_init__(self):
    lo, hi = self.convex_weight_range
    if not (self.max_log_scale >= 0 and 0 <= self.convex_prob <= 1 and 0 < lo <= hi
            and self.convex_center_std >= 0):
      raise ValueError(
          "AugmentedFamily needs max_log_scale >= 0, 0 <= convex_prob <= 1, "
          f"0 < lo <= hi and convex_center_std >= 0; got max_log_scale={self.max_log_scale}, "
          f"convex_prob={self.convex_prob}, convex_weight_range={self.convex_weight_range}, "
          f"convex_center_std={self.convex_center_std}")

  @property
  def run_mode(self) -> str:
    """The base family's run mode (:func:`metaopt.unroll.map_runs`)."""
    return self.base.run_mode

  def sample_task(self, key: jax.Array) -> AugmentedTask:
    """A base task, log-scales ``U[-s, s]`` per coordinate and (with prob. p) a convex term."""
    k_task, k_scale, k_use, k_weight, k_center, k_shape = jax.random.split(key, 6)
    task = self.base.sample_task(k_task)
    shapes = jax.eval_shape(lambda: self.base.init(task, k_shape)[0])
    leaves, treedef = jax.tree.flatten(shapes)
    scale_keys = jax.random.split(k_scale, len(leaves))
    center_keys = jax.random.split(k_center, len(leaves))
    log_scale = treedef.unflatten([
        jax.random.uniform(k, s.shape, jnp.float32, -self.max_log_scale, self.max_log_scale)
        for k, s in zip(scale_keys, leaves)])
    center = treedef.unflatten([self.convex_center_std * jax.random.normal(k, s.shape)
                                for k, s in zip(center_keys, leaves)])
    lo, hi = (jnp.log(jnp.float32(x)) for x in self.convex_weight_range)
    weight = jnp.exp(jax.random.uniform(k_weight, (), jnp.float32, lo, hi))
    weight = jnp.where(jax.random.uniform(k_use) < self.convex_prob, weight, 0.0)
    return AugmentedTask(task, log_scale, weight, center)

  def init(self, task: AugmentedTask, key: jax.Array):
    """The base theta_0 divided by the scales (the same starting point of the base problem)."""
    params, model_state = self.base.init(task.task, key)
    return jax.tree.map(lambda p, u: p * jnp.exp(-u), params, task.log_scale), model_state

  def loss(self, params, model_state, task: AugmentedTask, key: jax.Array):
    """``f(c * theta) + lambda / 2 * ||theta - xi||^2`` and the base model state."""
    scaled = jax.tree.map(lambda p, u: p * jnp.exp(u), params, task.log_scale)
    loss, model_state = self.base.loss(scaled, model_state, task.task, key)
    sq = sum(jnp.sum(jnp.square(p - x)) for p, x in
             zip(jax.tree.leaves(params), jax.tree.leaves(task.quad_center)))
    return loss + 0.5 * task.quad_weight * sq, model_state
