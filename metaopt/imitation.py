"""Imitation of a hand-designed optimizer during meta-training (Chen et al. 2020).

On an *imitation run* the optimizee follows a teacher (e.g. Adam) while the
learned rule runs alongside it on the same gradients, and the meta-objective
for that run is how far the rule's updates are from the teacher's; other runs
follow the learned rule as usual. Which runs imitate is drawn per run
(``MetaTrainConfig.imitation_prob``).

Reference: Chen et al., "Training stronger baselines for learning to
optimize", NeurIPS 2020. https://arxiv.org/abs/2010.09089
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Imitation(NamedTuple):
  """Imitation settings (hashable, a static argument of the jitted meta-step).

  Attributes:
    prob: probability that a run imitates the teacher.
    learning_rate: the teacher's (Adam's) learning rate, or the low end of its range.
    weight: scale of the imitation term in the meta-objective.
    max_learning_rate: None: every run's teacher uses ``learning_rate``; else each run
      draws its teacher's rate log-uniformly from ``[learning_rate, max_learning_rate]``
      (:func:`teacher`, :func:`with_teacher_rates`).
  """

  prob: float
  learning_rate: float
  weight: float
  max_learning_rate: float | None = None


def teacher(imitation: Imitation) -> optax.GradientTransformation:
  """The imitated Adam: fixed rate, or a per-run rate held in its state (``inject_hyperparams``).

  Example:
    >>> adam = teacher(Imitation(0.5, 0.01, 1.0, max_learning_rate=0.03))
    >>> adam.init(params).hyperparams["learning_rate"]   # 0.01 until with_teacher_rates
  """
  if imitation.max_learning_rate is None:
    return optax.adam(imitation.learning_rate)
  return optax.inject_hyperparams(optax.adam)(learning_rate=imitation.learning_rate)


def with_teacher_rates(state: "ImitationState", imitation: Imitation, key: jax.Array
                       ) -> "ImitationState":
  """Draw each run's teacher rate log-uniformly in ``[learning_rate, max_learning_rate]``.

  ``state`` holds a batch of runs (leading axis); without a rate range it is returned as is.

  Example:
    >>> state = with_teacher_rates(state, Imitation(0.5, 0.01, 1.0, 0.03), key)
  """
  if imitation.max_learning_rate is None:
    return state
  lo, hi = jnp.log(imitation.learning_rate), jnp.log(imitation.max_learning_rate)
  rates = jnp.exp(jax.random.uniform(key, state.imitate.shape, minval=lo, maxval=hi))
  hyper = dict(state.teacher.hyperparams, learning_rate=rates)
  return state._replace(teacher=state.teacher._replace(hyperparams=hyper))


class ImitationState(NamedTuple):
  """The state of :func:`imitating`.

  Attributes:
    rule: the learned rule's state.
    teacher: the teacher's state.
    imitate: bool scalar; True: this run applies the teacher's updates.
    error: running sum over steps of the relative squared distance between
      the rule's and the teacher's updates (see :func:`imitating`).
  """

  rule: Any
  teacher: Any
  imitate: jax.Array
  error: jax.Array


def update_distance(updates: Any, target: Any, eps: float = 1e-12) -> jax.Array:
  """Relative squared distance :math:`\\|u - t\\|^2 / (\\|t\\|^2 + \\epsilon)` over all leaves.

  Scale-free, so the imitation term is comparable across problems and steps.

  Example:
    >>> update_distance({"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([2.0, 0.0])})
    Array(0.25, dtype=float32)
  """
  sq = lambda tree: optax.tree.norm(optax.tree.cast(tree, jnp.float32), squared=True)
  return sq(optax.tree.sub(updates, target)) / (sq(target) + eps)


def imitating(rule: optax.GradientTransformation, teacher: optax.GradientTransformation
              ) -> optax.GradientTransformationExtraArgs:
  """Run ``rule`` beside ``teacher`` on the same gradients; imitation runs apply the teacher's.

  Each step adds :func:`update_distance` (rule's updates vs the teacher's, the
  teacher's under ``stop_gradient``) to ``state.error``, so a meta-loss can read
  the imitation error of an unroll as the difference of ``error`` before and
  after it. ``init`` sets ``imitate = False``; meta-training sets it per run.

  Args:
    rule: the learned rule (e.g. :func:`metaopt.learned_rule`).
    teacher: the hand-designed optimizer to imitate (e.g. ``optax.adam(1e-2)``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`ImitationState`.

  Example:
    >>> opt = imitating(metaopt.learned_rule(phi, config), optax.adam(1e-2))
    >>> state = opt.init(params)._replace(imitate=jnp.asarray(True))
    >>> updates, state = opt.update(grads, state)   # Adam's updates; state.error grows
  """

  def init_fn(params):
    return ImitationState(rule.init(params), teacher.init(params), jnp.zeros((), bool),
                          jnp.zeros((), jnp.float32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    own, rule_state = rule.update(updates, state.rule, params)
    target, teacher_state = teacher.update(updates, state.teacher, params)
    target = jax.lax.stop_gradient(target)
    applied = jax.tree.map(lambda t, u: jnp.where(state.imitate, t, u), target, own)
    error = state.error + update_distance(own, target)
    return applied, ImitationState(rule_state, teacher_state, state.imitate, error)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
