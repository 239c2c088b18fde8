import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt.preprocess import log_sign, num_features, preprocess


def test_log_sign_values_match_appendix_a():
  p = 10.0
  g = jnp.array([0.0, 1.0, -1.0, np.exp(-5.0), -np.exp(-5.0), 1e-30, -1e-30, 1e30, np.exp(-11.0)])
  out = np.asarray(log_sign(g, p)).T   # (2, n): features first
  expected = np.array([
      [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-0.5, 1.0], [-0.5, -1.0],
      [-1.0, np.exp(10.0) * 1e-30], [-1.0, -np.exp(10.0) * 1e-30],
      [np.log(1e30) / 10.0, 1.0], [-1.0, np.exp(-1.0)],
  ])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_log_sign_is_finite_with_finite_gradient_everywhere(dtype):
  g = jnp.array([0.0, -0.0, 1e-38, -1e-38, 1e-8, 3e38, -3e38, 1.0], dtype)
  out = log_sign(g)
  assert out.dtype == jnp.float32 and out.shape == (2, 8)
  assert bool(jnp.all(jnp.isfinite(out)))
  grads = jax.vmap(jax.jacfwd(lambda x: log_sign(x)))(g.astype(jnp.float32))
  assert bool(jnp.all(jnp.isfinite(grads)))


def test_preprocess_none_and_feature_counts():
  g = jnp.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(preprocess(g, "none")[0], g)
  assert preprocess(g, "log_sign").shape == (2, 2, 3)
  assert num_features("none") == 1 and num_features("log_sign") == 2
  with pytest.raises(ValueError, match="unknown preprocessing 'bogus'"):
    preprocess(g, "bogus")
