"""Gradient preprocessing applied coordinatewise before the learned optimizer's LSTM.

Two options, as in Andrychowicz et al. (2016), Appendix A:

* ``"none"``: the raw gradient, one input feature per coordinate.
* ``"log_sign"``: two features per coordinate,

  .. math::
     g \\mapsto \\begin{cases}
       (\\log|g| / p,\\ \\operatorname{sign}(g)) & |g| \\ge e^{-p} \\\\
       (-1,\\ e^{p} g) & \\text{otherwise}
     \\end{cases}

  which maps gradients spanning many orders of magnitude to inputs of order one.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

Preprocessing = Literal["none", "log_sign"]
PREPROCESSINGS: tuple[str, ...] = ("none", "log_sign")


def log_sign(g: jnp.ndarray, p: float = 10.0) -> jnp.ndarray:
  """The paper's log/sign preprocessing (Appendix A), computed in float32.

  Finite for every finite ``g`` including 0, and differentiable everywhere
  (the logarithm only ever sees values ``>= e^-p``).

  Args:
    g: gradient array of any shape.
    p: the cut-off exponent, ``p > 0`` (the paper uses 10).

  Returns:
    An array of shape ``g.shape + (2,)``.

  Example:
    >>> log_sign(jnp.array([0.0, 1.0, -1e-20]), p=10.0).shape
    (3, 2)
  """
  g = jnp.asarray(g, jnp.float32)
  threshold = jnp.exp(jnp.float32(-p))
  abs_g = jnp.abs(g)
  large = abs_g >= threshold
  log_part = jnp.where(large, jnp.log(jnp.maximum(abs_g, threshold)) / p, -1.0)
  sign_part = jnp.where(large, jnp.sign(g), jnp.exp(jnp.float32(p)) * g)
  return jnp.stack([log_part, sign_part], axis=-1)


def preprocess(g: jnp.ndarray, method: Preprocessing = "none", p: float = 10.0) -> jnp.ndarray:
  """Turn gradients into LSTM input features, one feature vector per coordinate.

  Args:
    g: gradient array of any shape.
    method: ``"none"`` (feature = g) or ``"log_sign"`` (see :func:`log_sign`).
    p: the exponent of ``"log_sign"``; ignored otherwise.

  Returns:
    float32 array of shape ``g.shape + (num_features(method),)``.

  Example:
    >>> preprocess(jnp.ones((4, 3)), "none").shape
    (4, 3, 1)
  """
  if method == "none":
    return jnp.asarray(g, jnp.float32)[..., None]
  if method == "log_sign":
    return log_sign(g, p)
  raise ValueError(f"unknown preprocessing {method!r}; expected one of {PREPROCESSINGS}")


def num_features(method: Preprocessing) -> int:
  """Number of input features per coordinate produced by ``method``."""
  if method not in PREPROCESSINGS:
    raise ValueError(f"unknown preprocessing {method!r}; expected one of {PREPROCESSINGS}")
  return 1 if method == "none" else 2
