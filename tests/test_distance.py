"""The distance estimate (metaopt.distance): Prodigy's D, per tree and per leaf, and the MLP rule
that multiplies its steps by it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

import metaopt
from metaopt import MLPRuleConfig
from metaopt.distance import init_distance, update_distance
from metaopt.rule import learned_rule


def _trajectory(num_steps=6):
  """A fixed sequence of (params, grads): a point moving down a steady, noisy gradient."""
  key = jax.random.key(0)
  direction = {"w": jnp.linspace(0.5, 2.0, 12).reshape(3, 4), "b": jnp.full(4, -1.0)}
  out = []
  for t in range(num_steps):
    key, k1, k2 = jax.random.split(key, 3)
    params = jax.tree.map(lambda d, k: -0.3 * t * d + 0.01 * jax.random.normal(k, d.shape),
                          direction, {"w": k1, "b": k1})
    grads = jax.tree.map(lambda d: d + 0.2 * jax.random.normal(k2, d.shape), direction)
    out.append((params, grads))
  return out


def _estimates(params0, trajectory, scope, initial=1e-6):
  state = init_distance(params0, initial, scope)
  treedef = jax.tree.structure(params0)
  out = []
  for t, (params, grads) in enumerate(trajectory, start=1):
    state = update_distance(state, jax.tree.leaves(grads), jax.tree.leaves(params), treedef,
                            jnp.int32(t), initial, 0.9, 0.999, scope)
    out.append(state.distance)
  return out


def test_tree_scope_is_prodigys_distance_estimate():
  trajectory = _trajectory()
  params0 = trajectory[0][0]
  prodigy = contrib.prodigy(learning_rate=1.0)
  state = prodigy.init(params0)
  want = []
  for params, grads in trajectory:
    _, state = prodigy.update(grads, state, params)
    want.append(float(state.estim_lr))
  got = [float(d) for d in _estimates(params0, trajectory, "tree")]
  assert want[-1] > 1e3 * want[0]   # the trajectory makes D grow
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_leaf_scope_gives_each_leaf_the_estimate_it_would_have_alone():
  trajectory = _trajectory()
  params0 = trajectory[0][0]
  together = _estimates(params0, trajectory, "leaf")[-1]
  for name in params0:
    alone = _estimates({name: params0[name]},
                       [({name: p[name]}, {name: g[name]}) for p, g in trajectory], "tree")
    np.testing.assert_allclose(float(together[name]), float(alone[-1]), rtol=1e-5)
  assert float(together["w"]) != pytest.approx(float(together["b"]), rel=1e-2)


def test_the_estimate_never_shrinks_and_ignores_zero_gradients():
  trajectory = _trajectory() + [(p, jax.tree.map(lambda g: -g, g)) for p, g in _trajectory()]
  estimates = [float(d) for d in _estimates(trajectory[0][0], trajectory, "tree")]
  assert all(b >= a for a, b in zip(estimates, estimates[1:]))
  zero = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
  d = _estimates(zero, [(zero, zero)] * 3, "leaf", initial=1e-3)[-1]
  assert all(float(x) == pytest.approx(1e-3) for x in jax.tree.leaves(d))


@pytest.mark.parametrize("scope", ["leaf", "tree"])
def test_a_silent_mlp_on_the_distance_finds_the_step_size_from_a_tiny_start(scope):
  """From D0 = 1e-6 the untrained rule reaches a minimum 30 units away on an ill-scaled
  quadratic: D grows by orders of magnitude, with no learning rate to tune."""
  config = MLPRuleConfig(hidden_sizes=(4,), adam_base_decay=0.9, step_mult=1.0,
                         distance_scope=scope, time_scales=())
  phi = metaopt.init_meta_params(config, jax.random.key(0))
  phi["params"]["output"] = jax.tree.map(jnp.zeros_like, phi["params"]["output"])
  scales = {"w": jnp.logspace(-1, 1, 8), "b": jnp.array([3.0])}
  loss = lambda p: sum(jnp.sum(s * (p[k] - 30.0) ** 2) for k, s in scales.items())
  rule = learned_rule(phi, config)

  @jax.jit
  def run(params):
    def step(carry, _):
      params, state = carry
      updates, state = rule.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None
    (params, state), _ = jax.lax.scan(step, (params, rule.init(params)), None, length=300)
    return params, state

  params0 = {"w": jnp.zeros(8), "b": jnp.zeros(1)}
  params, state = run(params0)
  assert float(loss(params)) < 1e-3 * float(loss(params0))
  assert all(float(d) > 1.0 for d in jax.tree.leaves(state.distance.distance))
  chex.assert_trees_all_equal_shapes(state.distance.x0, params0)


def test_distance_config_needs_params_and_a_known_scope():
  with pytest.raises(ValueError, match="distance_scope"):
    MLPRuleConfig(distance_scope="layer")
  config = MLPRuleConfig(hidden_sizes=(4,), use_params=False, distance_scope="leaf")
  assert config.state_bytes_per_parameter == 4 * (3 + 1 + 2)
  rule = learned_rule(metaopt.init_meta_params(config, jax.random.key(0)), config)
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="pass them"):
    rule.update(params, rule.init(params))
  # The starting point is a copy: a jitted step that donates the state keeps the params valid.
  state = rule.init(params)
  assert (state.distance.x0["w"].unsafe_buffer_pointer()
          != params["w"].unsafe_buffer_pointer())
  update = jax.jit(rule.update, donate_argnums=1)
  update(params, state, params)
  np.testing.assert_array_equal(params["w"], jnp.ones(3))
