import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt.networks import CoordinatewiseLSTM, LSTMConfig, init_meta_params


def _zeros_state(shape, config):
  return tuple(jnp.zeros((h,) + shape) for h in config.hidden_sizes)


@pytest.mark.parametrize("config",
                         [LSTMConfig(), LSTMConfig((7, 5, 3), "log_sign", output_scale=0.1)])
def test_shapes_and_shared_weights(config):
  phi = init_meta_params(config, jax.random.key(0))
  n_features = 1 if config.preprocessing == "none" else 2
  sizes = (n_features,) + config.hidden_sizes
  for layer, h in enumerate(config.hidden_sizes):
    assert phi["params"][f"lstm_{layer}"]["kernel"].shape == (sizes[layer] + h, 4 * h)
  assert phi["params"]["output"]["kernel"].shape == (config.hidden_sizes[-1], 1)
  net = CoordinatewiseLSTM(config)
  for shape in [(3,), (4, 5), (2, 3, 4)]:
    g = jax.random.normal(jax.random.key(1), shape)
    out, h, c = jax.jit(net.apply)(phi, g, _zeros_state(shape, config), _zeros_state(shape, config))
    assert out.shape == shape
    assert [x.shape for x in h] == [(s,) + shape for s in config.hidden_sizes]
    assert [x.shape for x in c] == [(s,) + shape for s in config.hidden_sizes]
  # The same weights serve any number of coordinates: phi does not depend on the shape.
  n_params = sum(x.size for x in jax.tree.leaves(phi))
  lstm_params = sum((sizes[i] + h + 1) * 4 * h for i, h in enumerate(config.hidden_sizes))
  assert n_params == lstm_params + sizes[-1] + 1


def test_coordinates_are_independent_permutation_equivariant():
  config = LSTMConfig()
  phi = init_meta_params(config, jax.random.key(0))
  # Non-trivial output weights so the update is not ~0.
  phi = jax.tree.map(lambda x: x * 5.0, phi)
  net = CoordinatewiseLSTM(config)
  n = 11
  g = jax.random.normal(jax.random.key(1), (n,))
  h = tuple(jax.random.normal(jax.random.key(2 + i), (20, n)) for i in range(2))
  c = tuple(jax.random.normal(jax.random.key(4 + i), (20, n)) for i in range(2))
  perm = jax.random.permutation(jax.random.key(9), n)
  out, h1, c1 = net.apply(phi, g, h, c)
  out_p, h1_p, c1_p = net.apply(phi, g[perm], tuple(x[:, perm] for x in h),
                                tuple(x[:, perm] for x in c))
  assert float(jnp.std(out)) > 1e-4
  np.testing.assert_allclose(out_p, out[perm], rtol=1e-6, atol=1e-7)
  for a, b in zip(h1 + c1, h1_p + c1_p):
    np.testing.assert_allclose(b, a[:, perm], rtol=1e-6, atol=1e-7)
  # Changing one coordinate's gradient changes that coordinate's update only.
  out2, _, _ = net.apply(phi, g.at[3].add(1.0), h, c)
  changed = np.flatnonzero(np.asarray(out2 != out))
  assert changed.tolist() == [3]


def test_config_validation():
  with pytest.raises(ValueError, match="hidden_sizes"):
    LSTMConfig(hidden_sizes=(20, 0))
  with pytest.raises(ValueError, match="unknown preprocessing"):
    LSTMConfig(preprocessing="log")
  config = LSTMConfig((3, 4), "log_sign")
  assert LSTMConfig.from_dict(config.to_dict()) == config
