"""The per-parameter MLP rule's features and network (see :mod:`metaopt.mlp_rule`).

Features are scale-free statistics of each coordinate's gradient history; the MLP, whose
weights all coordinates share, runs with the feature axis leading and, while small, is
emitted coordinate by coordinate so that XLA fuses it into one loop (a custom VJP keeps
matrix products for the backward pass).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from metaopt.mlp_rule import MLPRuleConfig

# Up to this many weights the MLP is emitted coordinate by coordinate, fused by XLA (fast);
# beyond it XLA:CPU's compile time and memory grow steeply (2 x 24 units exhaust 8 GB), so
# larger networks use matrix products.
FUSED_MAX_WEIGHTS = 512


def time_features(count: jax.Array, config: MLPRuleConfig) -> jax.Array:
  """``tanh(t / tau)`` for each of ``config.time_scales`` (t = ``count``, steps so far)."""
  tau = jnp.asarray(config.time_scales, jnp.float32)
  return jnp.tanh(jnp.asarray(count, jnp.float32) / tau)


def _mean_square(g2: jax.Array, axis) -> jax.Array:
  return jnp.mean(g2, axis=axis) if g2.ndim else g2


def leaf_features(config: MLPRuleConfig, g: jax.Array, param: jax.Array | None,
                  momenta: list, v: jax.Array, row: Any, col: Any, count: jax.Array):
  """Update one leaf's statistics with its gradient and return the MLP's inputs.

  With :math:`\\hat v = v_t / (1 - \\beta_2^t)` and :math:`\\hat m_k = m_{k,t} / (1 - b_k^t)`
  (bias-corrected, so the first step is not special), the features are, in order,

  .. math::
     \\frac{g}{\\sqrt{\\hat v}}, \\quad \\frac{\\hat m_k}{\\sqrt{\\hat v}} \\ (k = 1..K), \\quad
     \\frac{g_{ij}}{\\sqrt{\\hat r_i}}, \\quad \\frac{g_{ij}}{\\sqrt{\\hat c_j}}, \\quad
     \\frac{\\theta}{\\operatorname{rms}(\\theta)}

  where :math:`r_i` and :math:`c_j` are the running mean squares of row i and column j (the
  last two axes; the whole leaf's for leaves with fewer axes). Every gradient feature is
  unchanged when all gradients are multiplied by a constant c > 0 (up to ``eps``) and
  bounded: :math:`|g / \\sqrt{\\hat v}|, |\\hat m_k / \\sqrt{\\hat v}| \\le (1 -
  \\beta_2)^{-1/2}` (about 32 at 0.999); the parameter feature is O(1) whatever the leaf's
  scale. Every square root is an ``rsqrt(x + eps^2)``.

  Args:
    config: the rule's configuration.
    g: the leaf's gradient (any float dtype; computed in f32).
    param: the leaf's parameters (used when ``config.use_params``).
    momenta: the leaf's momenta, one f32 array per decay.
    v: the leaf's second moment.
    row, col: the leaf's factored statistics (ignored without ``config.factored``).
    count: t, the number of gradients seen including ``g`` (>= 1).

  Returns:
    ``(features, momenta, v, row, col)``: features of shape ``(num_features,) + g.shape``
    (f32) and the updated statistics.
  """
  g = jnp.asarray(g, jnp.float32)
  t = jnp.asarray(count, jnp.float32)
  eps2 = config.eps ** 2
  b2 = config.second_moment_decay
  v_correction = 1.0 / (1.0 - b2 ** t)
  g2 = g * g
  v = b2 * v + (1.0 - b2) * g2
  inv_rms = jax.lax.rsqrt(v * v_correction + eps2)
  momenta = [b * m + (1.0 - b) * g for b, m in zip(config.momentum_decays, momenta)]
  features = [g * inv_rms] + [
      m * (inv_rms / (1.0 - b ** t)) for b, m in zip(config.momentum_decays, momenta)]
  if config.factored:
    matrix = g.ndim >= 2
    row = b2 * row + (1.0 - b2) * _mean_square(g2, -1 if matrix else None)
    col = b2 * col + (1.0 - b2) * _mean_square(g2, -2 if matrix else None)
    inv_row = jax.lax.rsqrt(row * v_correction + eps2)
    inv_col = jax.lax.rsqrt(col * v_correction + eps2)
    if matrix:
      inv_row, inv_col = inv_row[..., None], inv_col[..., None, :]
    features += [g * inv_row, g * inv_col]
  if config.use_params:
    p = jnp.asarray(param, jnp.float32)
    features.append(p * jax.lax.rsqrt(_mean_square(p * p, None) + eps2))
  return jnp.stack(features), momenta, v, row, col


def _dense_layers(meta_params: Any, config: MLPRuleConfig, count: jax.Array) -> tuple:
  """``((kernel, bias), ...)`` of the MLP, the time features folded into the first bias."""
  p = meta_params["params"]
  layers = []
  for i in range(len(config.hidden_sizes)):
    bias = p[f"layer_{i}"]["bias"]
    if i == 0 and "time" in p:
      bias = bias + time_features(count, config) @ p["time"]["kernel"]
    layers.append((p[f"layer_{i}"]["kernel"], bias))
  layers.append((p["output"]["kernel"], p["output"]["bias"]))
  return tuple(layers)


def _mlp_by_dots(layers: tuple, x: jax.Array) -> tuple[list, list]:
  """Pre-activations and activations of the MLP on ``x`` ``(F, N)``, with matrix products."""
  activations, pre = [x], []
  for i, (kernel, bias) in enumerate(layers):
    a = jnp.tensordot(kernel, activations[-1], axes=(0, 0)) + bias[:, None]
    pre.append(a)
    if i < len(layers) - 1:
      activations.append(jax.nn.relu(a))
  return pre, activations


def _mlp_by_coordinates(layers: tuple, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The MLP as scalar-weighted sums of whole arrays: ``x`` ``(F,) + s`` -> ``(d, m)``.

  Every unit is ``b_j + sum_k W_kj x_k``, a sum of arrays shaped like the parameter, so XLA
  fuses the whole network (and the features before it) into one loop over the coordinates
  that keeps the hidden units in registers: no ``(H, N)`` array goes through memory. With
  matrix products ``[H, F] @ [F, N]`` (F about 7) the same step was about 15x slower at
  10^6 parameters on a 2-core CPU.
  """
  units = [x[k] for k in range(x.shape[0])]
  for i, (kernel, bias) in enumerate(layers):
    outputs = []
    for j in range(kernel.shape[1]):
      acc = bias[j] + kernel[0, j] * units[0]
      for k in range(1, kernel.shape[0]):
        acc = acc + kernel[k, j] * units[k]
      outputs.append(acc if i == len(layers) - 1 else jnp.maximum(acc, 0.0))
    units = outputs
  return units[0], units[1]


@jax.custom_vjp
def _mlp(layers: tuple, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  return _mlp_by_coordinates(layers, x)


def _mlp_fwd(layers, x):
  return _mlp_by_coordinates(layers, x), (layers, x)


def _mlp_bwd(residuals, cotangents):
  """Backward pass with matrix products (a few large ops, not F x H reductions)."""
  layers, x = residuals
  pre, activations = _mlp_by_dots(layers, x.reshape(x.shape[0], -1))
  delta = jnp.stack([c.reshape(-1) for c in cotangents])
  grads = [None] * len(layers)
  for i in reversed(range(len(layers))):
    kernel, _ = layers[i]
    grads[i] = (activations[i] @ delta.T, jnp.sum(delta, axis=1))
    delta = kernel @ delta
    if i > 0:
      delta = jnp.where(pre[i - 1] > 0, delta, 0.0)
  return tuple(grads), delta.reshape(x.shape)


_mlp.defvjp(_mlp_fwd, _mlp_bwd)


def mlp_apply(meta_params: Any, config: MLPRuleConfig, features: jax.Array,
              count: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The shared MLP on features ``(F,) + s``: ``(d, m)``, each of shape ``s``.

  .. math:: h_0 = x, \\quad h_{l+1} = \\operatorname{relu}(W_l^\\top h_l + b_l
     [+ W_\\tau^\\top \\tanh(t / \\tau)]_{l=0}), \\quad (d, m) = W_o^\\top h_L + b_o

  Networks of at most ``FUSED_MAX_WEIGHTS`` weights are computed coordinate by coordinate
  (each unit a weighted sum of arrays shaped like the parameter, fused by XLA), with a
  gradient by matrix products; larger ones with matrix products both ways.

  Args:
    meta_params: phi from :func:`init_mlp_meta_params`.
    config: the rule's configuration.
    features: ``(num_features,) + s`` f32 features (e.g. from :func:`leaf_features`).
    count: t, for the time features.

  Returns:
    ``(d, m)``: the direction and the log-magnitude per coordinate (m at most
    ``config.max_log_magnitude`` when that is set). With ``config.odd_direction``,
    :math:`d = (f_d(x) - f_d(\tilde x)) / 2` and :math:`m = (f_m(x) + f_m(\tilde x)) / 2`,
    where :math:`\tilde x` is x with the gradient features negated: d is odd and m even in the
    gradient, so a zero gradient history gives d = 0.

  Example:
    >>> phi = init_mlp_meta_params(MLPRuleConfig(), jax.random.key(0))
    >>> d, m = mlp_apply(phi, MLPRuleConfig(), jnp.zeros((6, 3)), jnp.int32(1))
  """
  layers = _dense_layers(meta_params, config, count)

  def apply(x):
    if config.num_weights <= FUSED_MAX_WEIGHTS:
      return _mlp(layers, x)
    pre, _ = _mlp_by_dots(layers, x.reshape(x.shape[0], -1))
    return tuple(pre[-1].reshape((2,) + x.shape[1:]))

  d, m = apply(features)
  if config.odd_direction:
    # Every feature but the parameter's changes sign with the gradient.
    flip = jnp.asarray([-1.0] * (config.num_features - config.use_params)
                       + [1.0] * config.use_params, jnp.float32)
    d_flipped, m_flipped = apply(features * flip.reshape((-1,) + (1,) * (features.ndim - 1)))
    d, m = (d - d_flipped) / 2, (m + m_flipped) / 2
  if config.max_log_magnitude is not None:
    m = jnp.minimum(m, config.max_log_magnitude)
  return d, m


def init_mlp_meta_params(config: MLPRuleConfig, key: jax.Array) -> dict:
  """Fresh phi for ``config``: LeCun-normal hidden layers, a small output layer, zero biases.

  Args:
    config: the rule's configuration.
    key: a typed PRNG key (``jax.random.key``).

  Returns:
    ``{"params": {"layer_0": {"kernel": [F, H0], "bias": [H0]}, "time": {"kernel": [T, H0]},
    ..., "output": {"kernel": [H, 2], "bias": [2]}}}``, shared by every coordinate
    (output 0: the direction d, output 1: the log-magnitude m).

  Example:
    >>> phi = init_mlp_meta_params(MLPRuleConfig(), jax.random.key(0))
    >>> phi["params"]["output"]["kernel"].shape
    (16, 2)
  """
  sizes = (config.num_features, *config.hidden_sizes)
  keys = jax.random.split(key, len(sizes) + 1)
  lecun = lambda k, n_in, n_out: jax.random.normal(k, (n_in, n_out)) / math.sqrt(n_in)
  params = {}
  for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
    params[f"layer_{i}"] = {"kernel": lecun(keys[i], n_in, n_out),
                            "bias": jnp.zeros((n_out,), jnp.float32)}
  if config.hidden_sizes and config.time_scales:
    params["time"] = {"kernel": lecun(keys[-2], len(config.time_scales), sizes[1])}
  params["output"] = {
      "kernel": config.output_init_scale * jax.random.normal(keys[-1], (sizes[-1], 2)),
      "bias": jnp.zeros((2,), jnp.float32)}
  return {"params": params}
