"""The learned rule as an optax ``GradientTransformation``.

This is the single definition of the learned step: meta-training builds the
same transform from traced meta-parameters, and users chain it into optax.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.mlp_rule import MLPRuleConfig, init_mlp_state, mlp_step
from metaopt.networks import CoordinatewiseLSTM, GroupedLSTMConfig, LSTMConfig, RuleConfig
from metaopt.preprocess import adam_features


class AdamMoments(NamedTuple):
  """Running gradient moments of the ``"rnnprop"`` inputs (trees like the params) and t."""

  m: Any
  v: Any
  count: jax.Array


class LearnedRuleState(NamedTuple):
  """Per-coordinate LSTM state.

  ``hidden[l]`` and ``cell[l]`` are trees with the structure of the params;
  each leaf has shape ``(hidden_sizes[l],) + param.shape`` and dtype float32.
  With the default configuration this is 2 layers x (h, c) x 20 units x 4
  bytes = 320 bytes of state per parameter coordinate. ``moments`` is an
  :class:`AdamMoments` for ``"rnnprop"`` inputs (8 more bytes per coordinate), else ``()``.
  """

  hidden: tuple[Any, ...]
  cell: tuple[Any, ...]
  moments: Any = ()


def _check_float_leaves(tree: Any, what: str) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"learned_rule: {what} leaf {jax.tree_util.keystr(path) or '<root>'} has "
          f"{'dtype ' + str(dtype) if dtype is not None else 'type ' + type(leaf).__name__}; "
          "the learned rule only handles floating-point leaves (mask integer leaves out "
          "with optax.masked or optax.partition)")


def init_lstm_state(params: Any, config: LSTMConfig) -> LearnedRuleState:
  """Zero LSTM state for every coordinate of ``params``, built with tree maps only.

  Args:
    params: a pytree of float arrays (or ``jax.ShapeDtypeStruct``).
    config: the network configuration.

  Returns:
    A :class:`LearnedRuleState`.

  Example:
    >>> s = init_lstm_state({"w": jnp.zeros((2, 3))}, LSTMConfig())
    >>> s.hidden[0]["w"].shape
    (20, 2, 3)
  """
  def zeros(size):
    return jax.tree.map(lambda p: jnp.zeros((size,) + tuple(p.shape), jnp.float32), params)
  moments = ()
  if config.stateful_inputs:
    like = lambda: jax.tree.map(lambda p: jnp.zeros(tuple(p.shape), jnp.float32), params)
    moments = AdamMoments(like(), like(), jnp.zeros((), jnp.int32))
  return LearnedRuleState(
      hidden=tuple(zeros(size) for size in config.hidden_sizes),
      cell=tuple(zeros(size) for size in config.hidden_sizes),
      moments=moments,
  )


def learned_step(
    meta_params: Any, config: LSTMConfig, grads: Any, state: LearnedRuleState,
    flatten_coordinates: bool = False,
) -> tuple[Any, LearnedRuleState]:
  """One step of the learned optimizer: ``(g_t, state_{t+1}) = m(grad_t, state_t; phi)``.

  The network is applied to each leaf with the same weights; updates have the
  dtype of the gradients.

  Args:
    meta_params: phi, as returned by :func:`metaopt.networks.init_meta_params`.
    config: the network configuration phi was made for.
    grads: pytree of gradients.
    state: the state from :func:`init_lstm_state` (same structure as ``grads``).
    flatten_coordinates: run the network on each leaf's coordinates as one flat
      vector (reshaped back after; the same numbers). Meta-training does: XLA:CPU
      differentiates an unroll through a leaf with a short last axis (a [784, 20]
      kernel) faster flat. Off by default: a leaf sharded along several mesh axes
      loses that sharding when flattened, so the optax transform keeps each
      leaf's shape and sharding.

  Returns:
    ``(updates, new_state)``; add updates to params (``optax.apply_updates``).
  """
  leaves, treedef = jax.tree.flatten(grads)
  state_treedef = jax.tree.structure(state.hidden[0])
  if state_treedef != treedef:
    raise ValueError(
        "learned_rule.update: the gradients' pytree structure differs from the state's "
        f"(made by init).\n  gradients: {treedef}\n  state:     {state_treedef}")
  for leaf, h in zip(leaves, jax.tree.leaves(state.hidden[0])):
    if tuple(leaf.shape) != tuple(h.shape[1:]):
      raise ValueError(
          f"learned_rule.update: a gradient leaf has shape {tuple(leaf.shape)} but the state "
          f"was made for shape {tuple(h.shape[1:])}")
  hidden = [treedef.flatten_up_to(h) for h in state.hidden]
  cell = [treedef.flatten_up_to(c) for c in state.cell]
  features, moments = [None] * len(leaves), ()
  if config.stateful_inputs:
    count = state.moments.count + 1
    m, v = treedef.flatten_up_to(state.moments.m), treedef.flatten_up_to(state.moments.v)
    for i, g in enumerate(leaves):
      features[i], m[i], v[i] = adam_features(g, m[i], v[i], count, config.beta1, config.beta2)
    moments = AdamMoments(treedef.unflatten(m), treedef.unflatten(v), count)
  net = CoordinatewiseLSTM(config)
  updates, new_h, new_c = [], [[] for _ in hidden], [[] for _ in cell]
  # (F,) + s -> (F, coordinates): a bitcast on one device (docs/performance.md).
  flat = (lambda x: x.reshape(x.shape[0], -1)) if flatten_coordinates else (lambda x: x)
  for i, g in enumerate(leaves):
    out, hs, cs = net.apply(meta_params, g.reshape(-1) if flatten_coordinates else g,
                            [flat(h[i]) for h in hidden], [flat(c[i]) for c in cell],
                            None if features[i] is None else flat(features[i]))
    updates.append(out.reshape(g.shape).astype(g.dtype))
    for layer in range(len(hidden)):
      new_h[layer].append(hs[layer].reshape(hidden[layer][i].shape))
      new_c[layer].append(cs[layer].reshape(cell[layer][i].shape))
  return (
      treedef.unflatten(updates),
      LearnedRuleState(
          hidden=tuple(treedef.unflatten(h) for h in new_h),
          cell=tuple(treedef.unflatten(c) for c in new_c),
          moments=moments,
      ),
  )


@functools.cache
def rule_factory(config: RuleConfig):
  """``phi -> learned_rule(phi, config)``, one object per config (a stable jit static argument)."""
  return functools.partial(learned_rule, config=config)


def learned_rule(meta_params: Any, config: RuleConfig = LSTMConfig(),
                 learning_rate_multiplier: float | jax.Array = 1.0,
                 flatten_coordinates: bool = False,
                 ) -> optax.GradientTransformationExtraArgs:
  """The learned optimizer (coordinatewise LSTM of Andrychowicz et al. 2016, or MLP) as optax.

  .. math::
     [g_t, h_{t+1}] = m(\\nabla f(\\theta_t), h_t; \\phi), \\qquad
     \\theta_{t+1} = \\theta_t + \\lambda g_t

  where m is a small LSTM (:class:`metaopt.networks.CoordinatewiseLSTM`)
  applied to every coordinate with shared weights phi and lambda is
  ``learning_rate_multiplier`` (1 as trained).

  **Sign convention.** The LSTM output is returned as is; optax also *adds*
  updates, so use ``optax.apply_updates`` and do not negate it.

  **State.** An ``(h, c)`` pair per LSTM layer for every parameter coordinate,
  float32, shaped ``(hidden,) + param.shape`` (feature axis first, which makes
  the step faster) and built with tree maps over the params (so masking and
  ``optax.tree.map_params`` follow the params):
  ``2 * 4 * sum(hidden_sizes)`` bytes per coordinate, i.e. 320 bytes per
  parameter for the default 2 x 20 network.

  **MLP rule family.** With a :class:`metaopt.mlp_rule.MLPRuleConfig` the step is
  :func:`metaopt.mlp_rule.mlp_step` instead: momenta and a second moment per coordinate
  (16 bytes per parameter by default, plus row/column statistics per matrix) feed a shared
  MLP whose direction d and log-magnitude m give ``d * exp(alpha * m) * beta``; its
  ``update`` reads ``params`` when the config's ``use_params`` is set (the default).

  Args:
    meta_params: trained phi (e.g. from :func:`metaopt.checkpoint.load_pretrained`).
    config: the network configuration phi was trained with (an ``LSTMConfig`` or an
      ``MLPRuleConfig``). A :class:`metaopt.networks.GroupedLSTMConfig` gives each
      parameter group its own LSTM (``meta_params`` = ``{group: phi}``) via
      ``optax.partition``.
    learning_rate_multiplier: scales the updates (a numeric hyper-parameter, so
      ``optax.inject_hyperparams`` can schedule it).
    flatten_coordinates: run the network on each leaf's coordinates as one flat
      vector (same updates and state; see :func:`learned_step`). Meta-training
      turns it on for speed; leave it off for leaves sharded along several axes.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. ``update(grads, state,
    params=None, **extra_args)`` ignores ``params`` and extra arguments; updates
    have the gradients' dtype (bf16 in, bf16 out).

  Example:
    >>> phi, config, _ = metaopt.load_pretrained("quadratic")
    >>> opt = optax.chain(optax.clip_by_global_norm(10.0), metaopt.learned_rule(phi, config))
    >>> params = {"w": jnp.ones(3)}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.ones(3)}, state)
    >>> params = optax.apply_updates(params, updates)

  References:
    Andrychowicz et al., "Learning to learn by gradient descent by gradient
    descent", NIPS 2016. https://arxiv.org/abs/1606.04474
  """

  if isinstance(config, GroupedLSTMConfig):
    missing = [n for n, _ in config.groups if n not in meta_params]
    if missing:
      raise ValueError(f"learned_rule: meta_params lack the groups {missing} of the config")
    return optax.partition(
        {name: learned_rule(meta_params[name], c, learning_rate_multiplier, flatten_coordinates)
         for name, c in config.groups},
        config.labels)

  if isinstance(config, MLPRuleConfig):
    def init_mlp(params):
      _check_float_leaves(params, "params")
      return init_mlp_state(params, config)

    def update_mlp(updates, state, params=None, **extra_args):
      del extra_args
      _check_float_leaves(updates, "gradient")
      updates, state = mlp_step(meta_params, config, updates, state, params, flatten_coordinates)
      return _scaled(updates, learning_rate_multiplier), state

    return optax.GradientTransformationExtraArgs(init_mlp, update_mlp)

  def init_fn(params):
    _check_float_leaves(params, "params")
    return init_lstm_state(params, config)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _check_float_leaves(updates, "gradient")
    updates, state = learned_step(meta_params, config, updates, state, flatten_coordinates)
    return _scaled(updates, learning_rate_multiplier), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _scaled(updates: Any, learning_rate_multiplier: float | jax.Array) -> Any:
  """``updates`` times the multiplier, in their dtypes (untouched for a literal 1)."""
  if isinstance(learning_rate_multiplier, (int, float)) and learning_rate_multiplier == 1:
    return updates
  return jax.tree.map(lambda u: (u * learning_rate_multiplier).astype(u.dtype), updates)
