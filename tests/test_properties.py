"""Property-based numerical robustness of the preprocessing and the rule (hypothesis)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import metaopt
from metaopt.networks import LSTMConfig
from metaopt.preprocess import log_sign

# Magnitudes from 1e-30 to 1e30 (and exact zeros), both signs.
magnitudes = st.one_of(st.just(0.0), st.floats(-30, 30).map(lambda e: 10.0 ** e))
gradients = st.lists(st.tuples(magnitudes, st.booleans()).map(lambda t: -t[0] if t[1] else t[0]),
                     min_size=1, max_size=16)

_PHI = {c: jax.tree.map(lambda x: 3.0 * x, metaopt.init_meta_params(LSTMConfig(preprocessing=c),
                                                                    jax.random.key(0)))
        for c in ("none", "log_sign")}
_RULES = {c: metaopt.learned_rule(_PHI[c], LSTMConfig(preprocessing=c)) for c in _PHI}
_UPDATE = {c: jax.jit(_RULES[c].update) for c in _RULES}


@settings(max_examples=60, deadline=None)
@given(gradients)
def test_log_sign_is_finite_and_bounded_for_finite_inputs(values):
  for dtype in (jnp.float32, jnp.bfloat16):
    g = jnp.asarray(values, dtype)
    out = np.asarray(log_sign(g))
    assert np.all(np.isfinite(out))
    assert np.all(np.abs(out[1]) <= 1.0 + 1e-6)
    assert np.all((out[0] >= -1.0) & (out[0] <= 9.0))


@settings(max_examples=40, deadline=None)
@given(gradients)
def test_rule_outputs_and_state_are_finite_for_finite_gradients(values):
  for preprocessing in ("none", "log_sign"):
    for dtype in (jnp.float32, jnp.bfloat16):
      g = jnp.asarray(values, dtype)
      assert bool(jnp.all(jnp.isfinite(g)))  # bf16 spans f32's exponent range
      rule = _RULES[preprocessing]
      state = rule.init(g)
      for _ in range(3):
        updates, state = _UPDATE[preprocessing](g, state)
        assert updates.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(updates)))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


@settings(max_examples=20, deadline=None)
@given(gradients, st.integers(0, 15), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_gradient_does_not_poison_other_coordinates(values, where, bad):
  where = where % len(values)
  g = jnp.asarray(values, jnp.float32)
  poisoned = g.at[where].set(bad)
  for preprocessing in ("none", "log_sign"):
    rule = _RULES[preprocessing]
    clean_u, clean_s = _UPDATE[preprocessing](g, rule.init(g))
    bad_u, bad_s = _UPDATE[preprocessing](poisoned, rule.init(g))
    others = np.arange(len(values)) != where
    np.testing.assert_array_equal(np.asarray(bad_u)[others], np.asarray(clean_u)[others])
    for a, b in zip(jax.tree.leaves(clean_s), jax.tree.leaves(bad_s)):
      np.testing.assert_array_equal(np.asarray(b)[..., others], np.asarray(a)[..., others])
