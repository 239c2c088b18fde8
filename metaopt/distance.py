"""A step size from the distance travelled: Prodigy's estimate, per parameter leaf.

The MLP rule's steps are relative (Adam-normalized), so the right absolute step size depends on
the problem: how far the parameters must move. Prodigy (Mishchenko & Defazio, 2024) estimates
that distance D from the run itself and grows it while the gradients keep pointing back along
the path taken:

.. math::
   r_t = \\beta_3 r_{t-1} + w_t \\langle g_t, x_0 - x_t \\rangle, \\quad
   s_t = \\beta_3 s_{t-1} + w_t g_t, \\quad
   D_{t+1} = \\max\\Big(D_t, \\frac{r_t}{\\lVert s_t \\rVert_1}\\Big)

with weights :math:`w_t = D_t^2 / D_0 \\cdot \\sqrt{1 - \\beta_2^t} / (1 - \\beta_1^t)` and
:math:`\\beta_3 = \\sqrt{\\beta_2}`, as in ``optax.contrib.prodigy``. Here ``scope="leaf"``
keeps one D per parameter leaf, so a problem made of several independent ones (the suite's
joint meta-training problem) gets the same steps as each one alone; ``"tree"`` keeps one D for
all leaves, as Prodigy does. State: the starting point and ``s`` (8 bytes per parameter) and
two scalars per leaf (or per tree).

Reference: Mishchenko & Defazio, "Prodigy: An expeditiously adaptive parameter-free learner",
ICML 2024. https://arxiv.org/abs/2306.06101
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class DistanceState(NamedTuple):
  """Trees shaped like the params: the starting point ``x0`` and the weighted gradient sum
  ``s``; one scalar per leaf (a single scalar for ``scope="tree"``): the weighted numerator
  ``r`` and the current estimate ``D``."""

  x0: Any
  s: Any
  numerator: Any
  distance: Any


def init_distance(params: Any, initial: float, scope: str = "leaf") -> DistanceState:
  """The estimator's state for ``params`` (x0 = ``params``; D = ``initial`` everywhere).

  Args:
    params: a pytree of float arrays.
    initial: D_0, the first (small) distance estimate.
    scope: ``"leaf"`` (one D per leaf) or ``"tree"`` (one D for all).

  Returns:
    A :class:`DistanceState` whose trees follow ``params``.

  Example:
    >>> s = init_distance({"w": jnp.ones(3)}, 1e-6)
    >>> float(s.distance["w"])
    1e-06
  """
  if scope not in ("leaf", "tree"):
    raise ValueError(f"distance scope must be 'leaf' or 'tree', got {scope!r}")
  # A copy: the state must not share the params' buffers (a jitted step may donate either).
  f32 = lambda p: jnp.array(p, jnp.float32, copy=True)
  scalar = lambda v: jnp.full((), v, jnp.float32)
  per = (lambda v: jax.tree.map(lambda _: scalar(v), params)) if scope == "leaf" else scalar
  return DistanceState(jax.tree.map(f32, params),
                       jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params),
                       per(0.0), per(initial))


def step_distances(state: DistanceState, treedef, scope: str) -> list:
  """The D of each leaf (in ``treedef``'s order) for this step's updates."""
  if scope == "tree":
    return [state.distance] * treedef.num_leaves
  return treedef.flatten_up_to(state.distance)


def update_distance(state: DistanceState, grads: list, params: list, treedef, count: jax.Array,
                    initial: float, beta1: float, beta2: float, scope: str) -> DistanceState:
  """Fold this step's gradients (at ``params``, before the update) into the estimate.

  Args:
    state: the state the step's D was read from.
    grads, params: flat lists of the leaves, in ``treedef``'s order.
    treedef: the params' tree structure.
    count: t >= 1, the steps taken including this one.
    initial: D_0. beta1, beta2: the decays whose bias corrections weigh the steps.
    scope: as in :func:`init_distance`.

  Returns:
    The new :class:`DistanceState`.
  """
  t = jnp.asarray(count, jnp.float32)
  beta3 = beta2 ** 0.5
  correction = jnp.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
  x0 = treedef.flatten_up_to(state.x0)
  s = treedef.flatten_up_to(state.s)
  ds = step_distances(state, treedef, scope)
  new_s, dots, norms = [], [], []
  for i, g in enumerate(grads):
    g = jnp.asarray(g, jnp.float32)
    w = ds[i] * ds[i] / initial * correction
    new_s.append(beta3 * s[i] + w * g)
    dots.append(w * jnp.sum(g * (x0[i] - jnp.asarray(params[i], jnp.float32))))
    norms.append(jnp.sum(jnp.abs(new_s[-1])))
  if scope == "tree":
    numerator = beta3 * state.numerator + sum(dots)
    distance = _grown(state.distance, numerator, sum(norms))
  else:
    old = treedef.flatten_up_to(state.numerator)
    nums = [beta3 * r + dot for r, dot in zip(old, dots)]
    numerator = treedef.unflatten(nums)
    distance = treedef.unflatten([_grown(d, r, n) for d, r, n in zip(ds, nums, norms)])
  return DistanceState(state.x0, treedef.unflatten(new_s), numerator, distance)


def _grown(distance: jax.Array, numerator: jax.Array, norm: jax.Array) -> jax.Array:
  """max(D, r / |s|_1), keeping D where |s|_1 = 0 (no gradient seen yet)."""
  estimate = numerator / jnp.where(norm > 0, norm, 1.0)
  return jnp.where(norm > 0, jnp.maximum(distance, estimate), distance)
