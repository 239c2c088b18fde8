"""A per-parameter MLP rule family: momentum features -> small MLP -> direction and log-magnitude.

The second rule family next to the paper's coordinatewise LSTM (docs/design.md, "Adding a rule
family"), in the style of the per-parameter MLP learned optimizers of Metz et al. (2022) and
VeLO/Celo: every coordinate keeps a few running statistics of its gradient (momenta at several
decays and a second moment; row and column second moments for matrices), an MLP with weights
shared by all coordinates reads scale-free features of them and outputs a direction ``d`` and a
log-magnitude ``m``, and the update is

.. math:: u = d \\cdot \\exp(\\alpha m) \\cdot \\beta.

The MLP runs with the feature axis leading, like :class:`metaopt.networks.CoordinatewiseLSTM`:
features ``(F,) + s``, hidden units ``(H,) + s``. With ``distance_scope`` the step is also
multiplied by a distance estimate grown from the run (:mod:`metaopt.distance`), so the rule's
step size needs no tuning. This module holds the configuration, the state and the per-step
function; :func:`metaopt.rule.learned_rule` makes it an optax transform and
:func:`metaopt.mlp_network.init_mlp_meta_params` makes phi (no LSTM module is imported).

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned
  optimizers", CoLLAs 2022. https://arxiv.org/abs/2203.11860
  Metz et al., "VeLO: Training versatile learned optimizers by scaling up", 2022.
  https://arxiv.org/abs/2211.09760
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metaopt.distance import init_distance, step_distances, update_distance
from metaopt.mlp_network import init_mlp_meta_params, leaf_features, mlp_apply

__all__ = ["MLPRuleConfig", "MLPRuleState", "init_mlp_meta_params", "init_mlp_state", "mlp_step"]


@dataclasses.dataclass(frozen=True)
class MLPRuleConfig:
  """Configuration of the per-parameter MLP rule (hashable, serializable).

  Attributes:
    hidden_sizes: units of each hidden (ReLU) layer of the MLP. One layer of 16 keeps the
      optax step within 10x ``optax.adam``'s time at 10^6 parameters on a 2-core CPU (``make
      bench``; the step is bound by arithmetic: 32 units take about 1.7x as long). Networks of
      at most ``FUSED_MAX_WEIGHTS`` weights run fused, coordinate by coordinate; larger ones
      with matrix products, about 15x slower per weight on a CPU (:func:`mlp_apply`).
    momentum_decays: decay of each gradient momentum kept per coordinate (one f32 each).
    second_moment_decay: decay of the running mean of g^2 (and of its row/column means).
    exp_mult: alpha, in ``u = d exp(alpha m) beta``. 1: m is the natural log of the step
      size's factor, so m = +-4.6 spans 100x either way, and meta-gradients of the two heads
      are of the same order. (Metz et al.'s 0.001 leaves exp(alpha m) ~ 1 unless |m| ~ 1000.)
    step_mult: beta, the step at d = 1, m = 0 (features are Adam-normalized, so this is like
      Adam's learning rate: Adam's default 0.001).
    eps: added (squared) to second moments before their inverse square root.
    factored: add the gradient normalized by its row's and by its column's running mean
      square (Adafactor-style statistics over the last two axes; a leaf with fewer than two
      axes uses the whole leaf's mean square for both).
    use_params: add the parameter value, normalized by the leaf's root mean square (``update``
      then needs ``params``).
    time_scales: tau of the time features tanh(t / tau) (t: steps taken; no run length needed).
      They are the same for every coordinate, so they only shift the first layer's bias.
    output_init_scale: std of the output layer's initial weights (small: the untrained rule
      takes small steps).
    adam_base_decay: if set (one of ``momentum_decays``), the direction is Adam's,
      :math:`-\\hat m / \\sqrt{\\hat v}` at that decay, plus the MLP's output, so the untrained
      rule (small output layer) is Adam with learning rate ``step_mult`` and meta-training
      learns corrections to it and a per-coordinate log-magnitude; None: the MLP's output alone.
    distance_scope: if set, every step is also multiplied by a distance estimate D grown from
      the run itself (Prodigy's, :mod:`metaopt.distance`): ``"leaf"``, one D per parameter
      leaf; ``"tree"``, one for all. Then ``step_mult`` is relative to D (Prodigy's rate 1),
      and the state holds the starting point and a gradient sum (8 more bytes per parameter).
    initial_distance: D_0, the distance estimate at the first step.
    max_log_magnitude: if set, m is clipped to at most this value (0: the MLP can only shrink
      the base step, so with ``distance_scope`` a learned magnitude cannot enlarge D).
    odd_direction: d odd and m even in the gradient (``mlp_apply``): no gradient, no step.
  """

  hidden_sizes: tuple[int, ...] = (16,)
  momentum_decays: tuple[float, ...] = (0.5, 0.9, 0.99)
  second_moment_decay: float = 0.999
  exp_mult: float = 1.0
  step_mult: float = 0.001
  eps: float = 1e-8
  factored: bool = True
  use_params: bool = True
  time_scales: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000)
  output_init_scale: float = 0.01
  adam_base_decay: float | None = None
  distance_scope: str | None = None
  initial_distance: float = 1e-6
  max_log_magnitude: float | None = None
  odd_direction: bool = False

  def __post_init__(self):
    for name in ("hidden_sizes", "momentum_decays", "time_scales"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
    object.__setattr__(self, "momentum_decays", tuple(float(b) for b in self.momentum_decays))
    object.__setattr__(self, "time_scales", tuple(float(t) for t in self.time_scales))
    if any(h <= 0 for h in self.hidden_sizes):
      raise ValueError(f"MLPRuleConfig.hidden_sizes must be positive, got {self.hidden_sizes}")
    for b in (*self.momentum_decays, self.second_moment_decay):
      if not 0 <= b < 1:
        raise ValueError(f"MLPRuleConfig decays must be in [0, 1), got {b!r}")
    if self.adam_base_decay is not None:
      object.__setattr__(self, "adam_base_decay", float(self.adam_base_decay))
      if self.adam_base_decay not in self.momentum_decays:
        raise ValueError(f"MLPRuleConfig.adam_base_decay must be one of momentum_decays "
                         f"{self.momentum_decays}, got {self.adam_base_decay!r}")
    if self.distance_scope not in (None, "leaf", "tree"):
      raise ValueError(f"MLPRuleConfig.distance_scope must be None, 'leaf' or 'tree', "
                       f"got {self.distance_scope!r}")
    if not math.isfinite(bound := self.max_log_magnitude or 0.0):
      raise ValueError(f"MLPRuleConfig.max_log_magnitude must be finite or None, got {bound!r}")
    if any(t <= 0 for t in self.time_scales):
      raise ValueError(f"MLPRuleConfig.time_scales must be > 0, got {self.time_scales}")
    for name in ("exp_mult", "step_mult", "eps", "output_init_scale", "initial_distance"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"MLPRuleConfig.{name} must be a finite number > 0, got {value!r}")

  @property
  def num_features(self) -> int:
    """Per-coordinate inputs of the MLP (the time features only shift its first bias)."""
    return 1 + len(self.momentum_decays) + 2 * self.factored + self.use_params

  @property
  def num_weights(self) -> int:
    """Weights of the MLP's matrices (the time features' excluded)."""
    sizes = (self.num_features, *self.hidden_sizes, 2)
    return sum(a * b for a, b in zip(sizes, sizes[1:]))

  @property
  def state_bytes_per_parameter(self) -> int:
    """f32 bytes of state per coordinate: the momenta, the second moment (and with a
    ``distance_scope``, the starting point and the distance estimator's gradient sum)."""
    return 4 * (len(self.momentum_decays) + 1 + 2 * (self.distance_scope is not None))

  def to_dict(self) -> dict:
    """Plain-JSON form, used in checkpoints (``"rule": "mlp"`` tells it from an LSTM's)."""
    d = dataclasses.asdict(self)
    for name in ("hidden_sizes", "momentum_decays", "time_scales"):
      d[name] = list(d[name])
    return {"rule": "mlp", **d}

  @classmethod
  def from_dict(cls, d: dict) -> MLPRuleConfig:
    """Inverse of :meth:`to_dict` (fields missing from older files take their defaults)."""
    return cls(**{k: v for k, v in d.items() if k != "rule"})


# A pytree without leaves: a static part of a jitted function's signature (like LSTMConfig).
jax.tree_util.register_static(MLPRuleConfig)




class MLPRuleState(NamedTuple):
  """Per-coordinate statistics of the MLP rule, built with tree maps over the params.

  ``momenta[k]`` and ``second_moment`` are f32 trees shaped like the params (4 bytes per
  coordinate each: 16 bytes per parameter with the default three decays); ``row`` and ``col``
  hold, per leaf of two or more axes, the running mean square of the gradient over its last
  axis (shape ``s[:-1]``) and over its second-to-last axis (``s[:-2] + s[-1:]``), and a
  scalar (the leaf's mean square, both) for other leaves: O(rows + cols) per matrix, ``()``
  without factored features. Like ``optax.adafactor``'s ``v_row``/``v_col``,
  ``optax.tree.map_params`` treats them as parameter trees. ``count`` is the number of
  updates so far (int32 scalar). ``distance`` is the :class:`metaopt.distance.DistanceState`
  with a ``distance_scope``, else ``()``.
  """

  momenta: tuple[Any, ...]
  second_moment: Any
  row: Any
  col: Any
  count: jax.Array
  distance: Any = ()


def init_mlp_state(params: Any, config: MLPRuleConfig) -> MLPRuleState:
  """Zero statistics for every coordinate of ``params``, built with tree maps only.

  Args:
    params: a pytree of float arrays (or ``jax.ShapeDtypeStruct``).
    config: the rule's configuration.

  Returns:
    An :class:`MLPRuleState`.

  Example:
    >>> s = init_mlp_state({"w": jnp.zeros((2, 3))}, MLPRuleConfig())
    >>> s.momenta[0]["w"].shape, s.row["w"].shape, s.col["w"].shape
    ((2, 3), (2,), (3,))
  """
  zeros = lambda shape: jax.tree.map(lambda p: jnp.zeros(shape(p.shape), jnp.float32), params)
  like = lambda: zeros(tuple)
  row, col = (zeros(_row_shape), zeros(_col_shape)) if config.factored else ((), ())
  distance = (() if config.distance_scope is None
              else init_distance(params, config.initial_distance, config.distance_scope))
  return MLPRuleState(tuple(like() for _ in config.momentum_decays), like(), row, col,
                      jnp.zeros((), jnp.int32), distance)


def _row_shape(shape) -> tuple[int, ...]:
  return tuple(shape[:-1]) if len(shape) >= 2 else ()


def _col_shape(shape) -> tuple[int, ...]:
  return tuple(shape[:-2]) + tuple(shape[-1:]) if len(shape) >= 2 else ()


def mlp_step(meta_params: Any, config: MLPRuleConfig, grads: Any, state: MLPRuleState,
             params: Any = None, flatten_coordinates: bool = False
             ) -> tuple[Any, MLPRuleState]:
  """One step of the MLP rule: statistics, features, MLP, ``u = d exp(alpha m) beta``.

  .. math:: u_t = d_t \\cdot \\exp(\\alpha\\, m_t) \\cdot \\beta, \\qquad
     (d_t, m_t) = \\mathrm{MLP}_\\phi(\\text{features}_t, \\tanh(t / \\tau))

  (with ``adam_base_decay``, :math:`d_t` also gets Adam's direction added).

  Args:
    meta_params: phi, as returned by :func:`init_mlp_meta_params`.
    config: the configuration phi was made for.
    grads: pytree of gradients.
    state: the state from :func:`init_mlp_state` (same structure as ``grads``).
    params: the parameters (needed when ``config.use_params``).
    flatten_coordinates: run the MLP on each leaf's coordinates as one flat vector (the same
      numbers; the statistics keep the leaf's shape).

  Returns:
    ``(updates, new_state)``; updates have the gradients' dtypes.

  Example:
    >>> config = MLPRuleConfig()
    >>> phi = init_mlp_meta_params(config, jax.random.key(0))
    >>> p = {"w": jnp.ones((2, 3))}
    >>> u, s = mlp_step(phi, config, p, init_mlp_state(p, config), p)
  """
  leaves, treedef = jax.tree.flatten(grads)
  state_treedef = jax.tree.structure(state.second_moment)
  if state_treedef != treedef:
    raise ValueError(
        "learned_rule.update: the gradients' pytree structure differs from the state's "
        f"(made by init).\n  gradients: {treedef}\n  state:     {state_treedef}")
  v = treedef.flatten_up_to(state.second_moment)
  for leaf, s in zip(leaves, v):
    if tuple(leaf.shape) != tuple(s.shape):
      raise ValueError(
          f"learned_rule.update: a gradient leaf has shape {tuple(leaf.shape)} but the state "
          f"was made for shape {tuple(s.shape)}")
  if config.use_params or config.distance_scope is not None:
    if params is None:
      raise ValueError("learned_rule.update: this MLP rule reads the parameters "
                       "(MLPRuleConfig.use_params or distance_scope); pass them: "
                       "update(grads, state, params)")
    param_leaves = treedef.flatten_up_to(params)
  else:
    param_leaves = [None] * len(leaves)
  count = state.count + 1
  momenta = [treedef.flatten_up_to(m) for m in state.momenta]
  rows = treedef.flatten_up_to(state.row) if config.factored else [()] * len(leaves)
  cols = treedef.flatten_up_to(state.col) if config.factored else [()] * len(leaves)
  distances = [1.0] * len(leaves)
  if config.distance_scope is not None:
    distances = step_distances(state.distance, treedef, config.distance_scope)
  updates = []
  for i, g in enumerate(leaves):
    # With a distance, the statistics weigh each gradient by the D of its step (Prodigy's
    # choice): the momenta follow the current scale of the run, not its first tiny steps.
    # (By D / D0: the features are scale-free, and eps stays small next to the gradients.)
    weighted = g
    if config.distance_scope is not None:
      weighted = g * (distances[i] / config.initial_distance)
    x, ms, v[i], rows[i], cols[i] = leaf_features(
        config, weighted, param_leaves[i], [m[i] for m in momenta], v[i], rows[i], cols[i], count)
    for m, new in zip(momenta, ms):
      m[i] = new
    if flatten_coordinates:
      x = x.reshape(x.shape[0], -1)
    d, log_magnitude = mlp_apply(meta_params, config, x, count)
    if config.adam_base_decay is not None:  # feature 1 + k: the k-th momentum over sqrt(v)
      d = d - x[1 + config.momentum_decays.index(config.adam_base_decay)]
    u = d * jnp.exp(config.exp_mult * log_magnitude) * (config.step_mult * distances[i])
    updates.append(u.reshape(g.shape).astype(g.dtype))
  distance = state.distance
  if config.distance_scope is not None:
    beta1 = (config.adam_base_decay if config.adam_base_decay is not None
             else max(config.momentum_decays, default=0.9))
    distance = update_distance(distance, leaves, param_leaves, treedef, count,
                               config.initial_distance, beta1, config.second_moment_decay,
                               config.distance_scope)
  factored = lambda xs: treedef.unflatten(xs) if config.factored else ()
  return treedef.unflatten(updates), MLPRuleState(
      tuple(treedef.unflatten(m) for m in momenta), treedef.unflatten(v), factored(rows),
      factored(cols), count, distance)
