"""Gradient preprocessing applied coordinatewise before the learned optimizer's LSTM.

Stateless options, as in Andrychowicz et al. (2016), Appendix A:

* ``"none"``: the raw gradient, one input feature per coordinate.
* ``"log_sign"``: two features per coordinate,

  .. math::
     g \\mapsto \\begin{cases}
       (\\log|g| / p,\\ \\operatorname{sign}(g)) & |g| \\ge e^{-p} \\\\
       (-1,\\ e^{p} g) & \\text{otherwise}
     \\end{cases}

  which maps gradients spanning many orders of magnitude to inputs of order one.

and one stateful option (Lv et al. 2017, "Learning gradient descent: better
generalization and longer horizons", RNNprop):

* ``"rnnprop"``: two features per coordinate from Adam's running moments kept
  in the rule's state (:func:`adam_features`),
  ``(m_hat / (sqrt(v_hat) + eps), g / (sqrt(v_hat) + eps))``: invariant to the
  scale of the gradients.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

Preprocessing = Literal["none", "log_sign", "rnnprop"]
PREPROCESSINGS: tuple[str, ...] = ("none", "log_sign", "rnnprop")
STATEFUL_PREPROCESSINGS: tuple[str, ...] = ("rnnprop",)


def log_sign(g: jnp.ndarray, p: float = 10.0) -> jnp.ndarray:
  """The paper's log/sign preprocessing (Appendix A), computed in float32.

  Finite for every finite ``g`` including 0, and differentiable everywhere
  (the logarithm only ever sees values ``>= e^-p``).

  Args:
    g: gradient array of any shape.
    p: the cut-off exponent, ``p > 0`` (the paper uses 10).

  Returns:
    An array of shape ``(2,) + g.shape`` (features first, like the LSTM state).

  Example:
    >>> log_sign(jnp.array([0.0, 1.0, -1e-20]), p=10.0).shape
    (2, 3)
  """
  g = jnp.asarray(g, jnp.float32)
  threshold = jnp.exp(jnp.float32(-p))
  abs_g = jnp.abs(g)
  large = abs_g >= threshold
  log_part = jnp.where(large, jnp.log(jnp.maximum(abs_g, threshold)) / p, -1.0)
  sign_part = jnp.where(large, jnp.sign(g), jnp.exp(jnp.float32(p)) * g)
  return jnp.stack([log_part, sign_part])


def preprocess(g: jnp.ndarray, method: Preprocessing = "none", p: float = 10.0) -> jnp.ndarray:
  """Turn gradients into LSTM input features, one feature vector per coordinate.

  Args:
    g: gradient array of any shape.
    method: ``"none"`` (feature = g) or ``"log_sign"`` (see :func:`log_sign`).
    p: the exponent of ``"log_sign"``; ignored otherwise.

  Returns:
    float32 array of shape ``(num_features(method),) + g.shape``: the feature axis
    leads, so each feature is a contiguous array shaped like ``g``.

  Example:
    >>> preprocess(jnp.ones((4, 3)), "none").shape
    (1, 4, 3)
  """
  if method == "none":
    return jnp.asarray(g, jnp.float32)[None]
  if method == "log_sign":
    return log_sign(g, p)
  if method in STATEFUL_PREPROCESSINGS:
    raise ValueError(f"preprocessing {method!r} needs the rule's running moments: compute its "
                     "features with adam_features and pass them to the network")
  raise ValueError(f"unknown preprocessing {method!r}; expected one of {PREPROCESSINGS}")


def num_features(method: Preprocessing) -> int:
  """Number of input features per coordinate produced by ``method``."""
  if method not in PREPROCESSINGS:
    raise ValueError(f"unknown preprocessing {method!r}; expected one of {PREPROCESSINGS}")
  return 1 if method == "none" else 2


def adam_features(g: jnp.ndarray, m: jnp.ndarray, v: jnp.ndarray, count: jnp.ndarray,
                  beta1: float, beta2: float, eps: float = 1e-8):
  """RNNprop's inputs: Adam-normalized moments, after updating the moments with ``g``.

  .. math::
     m' = \\beta_1 m + (1 - \\beta_1) g, \\quad v' = \\beta_2 v + (1 - \\beta_2) g^2,
     \\quad \\hat m = m' / (1 - \\beta_1^{t}), \\quad \\hat v = v' / (1 - \\beta_2^{t})

  Args:
    g: gradient array of any shape.
    m, v: the running first and second moments (shape of ``g``, float32).
    count: t, the number of gradients seen including ``g`` (int scalar, >= 1).
    beta1, beta2: the moments' decay rates.
    eps: added to sqrt(v_hat).

  Returns:
    ``(features, m', v')``: features of shape ``(2,) + g.shape`` =
    ``(m_hat / (sqrt(v_hat) + eps), g / (sqrt(v_hat) + eps))``.

  Example:
    >>> z = jnp.zeros(3)
    >>> x, m, v = adam_features(jnp.ones(3), z, z, jnp.int32(1), 0.95, 0.95)
    >>> x[:, 0]   # first step: both features are sign(g)
    Array([1., 1.], dtype=float32)
  """
  g = jnp.asarray(g, jnp.float32)
  m = beta1 * m + (1.0 - beta1) * g
  v = beta2 * v + (1.0 - beta2) * g * g
  t = jnp.asarray(count, jnp.float32)
  denom = jnp.sqrt(v / (1.0 - beta2 ** t)) + eps
  return jnp.stack([m / (1.0 - beta1 ** t) / denom, g / denom]), m, v
