"""optax's common contract for optimizers, applied to the learned rule (docs/design.md, adding
a rule family)."""

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import metaopt
from metaopt.networks import LSTMConfig
from metaopt.rule import learned_rule

RNNPROP = LSTMConfig(preprocessing="rnnprop", output_activation="tanh", output_scale=0.1)


@pytest.fixture(params=["paper", "rnnprop"])
def rule(request, phi):
  """The paper's rule, and the RNNprop variant (moments in its state)."""
  if request.param == "rnnprop":
    return learned_rule(jax.tree.map(lambda x: 3.0 * x,
                                     metaopt.init_meta_params(RNNPROP, jax.random.key(1))), RNNPROP)
  return learned_rule(jax.tree.map(lambda x: 3.0 * x, phi))


def _params(dtype=jnp.float32):
  return {"w": jnp.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(3, 4), "b": jnp.ones(4, dtype)}


def _grads(params):
  return jax.tree.map(lambda p: jnp.sin(3.0 * p), params)


def test_extra_kwargs_under_jit(rule):
  params = _params()
  state = rule.init(params)
  update = jax.jit(lambda g, s, p: rule.update(g, s, p, some_unexpected_argument=jnp.ones(2)))
  updates, _ = update(_grads(params), state, params)
  chex.assert_trees_all_equal_shapes(updates, params)


def test_no_recompilation_on_the_second_update(rule):
  params = _params()
  update = jax.jit(rule.update)
  state = rule.init(params)
  updates, state = update(_grads(params), state, params)
  params = optax.apply_updates(params, updates)
  updates, state = update(_grads(params), state, params)
  assert update._cache_size() == 1


def test_tree_map_params(rule):
  params = _params()
  state = rule.init(params)
  mapped = optax.tree.map_params(rule, lambda x: jnp.full_like(x, 7.0), state)
  assert all(bool(jnp.all(x == 7.0)) for x in jax.tree.leaves((mapped.hidden, mapped.cell)))
  specs = optax.tree.map_params(rule, lambda _, spec: spec, state, {"w": "W", "b": "B"},
                                transform_non_params=lambda _: None)
  assert specs.hidden[0] == {"w": "W", "b": "B"} and specs.cell[1] == {"w": "W", "b": "B"}


def test_inject_hyperparams_matches_the_plain_factory(phi):
  params = _params()
  plain = learned_rule(phi, LSTMConfig(), learning_rate_multiplier=0.3)
  injected = optax.inject_hyperparams(learned_rule, static_args=("config",))(
      phi, LSTMConfig(), learning_rate_multiplier=0.3)
  u1, _ = plain.update(_grads(params), plain.init(params))
  state = injected.init(params)
  u2, state = injected.update(_grads(params), state)
  chex.assert_trees_all_close(u1, u2)
  # Changing the injected value changes the step like the factory argument would.
  state = injected.init(params)
  state.hyperparams["learning_rate_multiplier"] = jnp.asarray(0.6)
  u3, _ = jax.jit(injected.update)(_grads(params), state)
  chex.assert_trees_all_close(jax.tree.map(lambda x: 2 * x, u1), u3, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtype_preservation_and_stable_state(rule, dtype):
  params = _params(dtype)
  state = rule.init(params)
  updates, new_state = jax.jit(rule.update)(_grads(params), state, params)
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)

  # So lax.cond between the update and an identity type-checks.
  def maybe_update(flag, grads, state):
    return jax.lax.cond(flag, lambda: rule.update(grads, state)[1], lambda: state)
  jax.jit(maybe_update)(True, _grads(params), state)


def test_multi_steps_accumulates(rule):
  k = 3
  opt = optax.MultiSteps(rule, every_k_schedule=k)
  params = _params()
  state = opt.init(params)
  update = jax.jit(opt.update)
  for i in range(k):
    updates, state = update(_grads(params), state, params)
    nonzero = any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))
    assert nonzero == (i == k - 1)
  # The k-th update is the rule applied to the mean gradient (all micro-batches equal here).
  expected, _ = rule.update(_grads(params), rule.init(params))
  chex.assert_trees_all_close(updates, expected, rtol=1e-5)   # jit vs eager rounding


def test_init_accepts_shape_dtype_structs(rule):
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), _params())
  state = jax.eval_shape(rule.init, abstract)
  assert state.hidden[0]["w"].shape == (20, 3, 4) and state.cell[1]["b"].dtype == jnp.float32


def test_state_memory_per_parameter_is_320_bytes_for_the_default_config(rule):
  params = {"w": jnp.zeros((100, 10)), "b": jnp.zeros(17)}
  state = rule.init(params)
  n = 100 * 10 + 17
  moments = 8 * n + 4 if state.moments else 0   # rnnprop: m and v (f32) per coordinate + count
  assert sum(x.nbytes for x in jax.tree.leaves(state)) == 320 * n + moments
  assert "320 bytes" in learned_rule.__doc__


def test_masked_and_partition_with_a_hand_designed_rule(rule):
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4), "count": jnp.array(3, jnp.int32)}
  labels = {"w": "learned", "b": "adam", "count": "frozen"}
  opt = optax.partition({"learned": rule, "adam": optax.adam(0.1),
                         "frozen": optax.set_to_zero()}, labels)
  state = opt.init(params)
  grads = {"w": jnp.full((3, 4), 0.5), "b": jnp.full(4, 0.5), "count": jnp.array(0, jnp.int32)}
  updates, state = jax.jit(opt.update)(grads, state, params)
  alone, _ = rule.update({"w": grads["w"]}, rule.init({"w": params["w"]}))
  chex.assert_trees_all_close(updates["w"], alone["w"])
  chex.assert_trees_all_close(updates["b"], jnp.full(4, -0.1), rtol=1e-5)
  masked = optax.masked(rule, {"w": True, "b": False})
  u, _ = masked.update({"w": grads["w"], "b": grads["b"]},
                       masked.init({"w": params["w"], "b": params["b"]}))
  chex.assert_trees_all_close(u["w"], alone["w"])
  chex.assert_trees_all_equal(u["b"], grads["b"])


def test_common_companions_train(phi):
  phi, config, _ = metaopt.load_pretrained("quadratic")
  opt = optax.chain(optax.clip_by_global_norm(100.0), optax.add_decayed_weights(1e-4),
                    optax.apply_if_finite(learned_rule(phi, config), max_consecutive_errors=3))
  w = jax.random.normal(jax.random.key(0), (10, 10))
  y = jax.random.normal(jax.random.key(1), (10,))
  loss = lambda x: jnp.sum((w @ x - y) ** 2)
  x = jnp.zeros(10)
  state = opt.init(x)

  @jax.jit
  def step(x, state):
    updates, state = opt.update(jax.grad(loss)(x), state, x)
    return optax.apply_updates(x, updates), state

  for _ in range(60):
    x, state = step(x, state)
  assert float(loss(x)) < 0.1 * float(loss(jnp.zeros(10)))
  # A non-finite gradient is skipped, not applied.
  x_nan, state_nan = step(x.at[0].set(jnp.nan), state)
  assert int(state_nan[2].notfinite_count) == 1


SHARDING_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import metaopt
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    phi = metaopt.init_meta_params(metaopt.LSTMConfig(), jax.random.key(0))
    rule = metaopt.learned_rule(phi)
    specs = {"w": P("data", "model"), "b": P("model")}
    params = {"w": jnp.ones((8, 6)), "b": jnp.ones(6)}
    params = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs)
    state = jax.jit(rule.init)(params)
    updates, state = jax.jit(rule.update)(params, state)
    for name, spec in specs.items():
      for tree in state.hidden + state.cell:
        got = tree[name].sharding
        want = NamedSharding(mesh, P(None, *spec))
        assert got.is_equivalent_to(want, tree[name].ndim), (name, got, want)
      assert updates[name].sharding.is_equivalent_to(NamedSharding(mesh, spec), updates[name].ndim)
    print("SHARDING-OK")
""")


def test_state_keeps_the_params_sharding_on_8_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300)
  assert "SHARDING-OK" in out.stdout, out.stderr[-3000:]
