import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt.networks import CoordinatewiseLSTM, LSTMConfig, init_meta_params
from metaopt.rule import learned_rule, learned_step


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.5])}


def test_updates_are_the_lstm_output_and_are_added(phi):
  phi = jax.tree.map(lambda x: 3.0 * x, phi)
  opt = learned_rule(phi)
  params = _params()
  grads = jax.tree.map(lambda p: p ** 2 - 0.3, params)
  state = opt.init(params)
  updates, new_state = jax.jit(opt.update)(grads, state, params)
  # Same as applying the network leaf by leaf (one definition of the step).
  net = CoordinatewiseLSTM(LSTMConfig())
  for name in params:
    out, h, _ = net.apply(phi, grads[name], [s[name] for s in state.hidden],
                          [s[name] for s in state.cell])
    np.testing.assert_allclose(updates[name], out, rtol=1e-6)
    np.testing.assert_allclose(new_state.hidden[1][name], h[1], rtol=1e-6)
  new_params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new_params["w"], params["w"] + updates["w"], rtol=1e-6)
  assert float(jnp.abs(updates["w"]).max()) > 0


def test_in_optax_chain_under_jit_with_extra_args(phi):
  opt = optax.chain(optax.clip_by_global_norm(1.0), learned_rule(phi), optax.scale(2.0))
  params = _params()
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))(params)
    updates, state = opt.update(grads, state, params, unexpected_kwarg=1.0)
    return optax.apply_updates(params, updates), state

  p1, s1 = step(params, state)
  p2, s2 = step(p1, s1)
  assert jax.tree.structure(s2) == jax.tree.structure(state)
  # update needs no params and ignores unknown keyword arguments.
  rule = learned_rule(phi)
  u_with, _ = rule.update(params, rule.init(params), params, anything="x")
  u_without, _ = rule.update(params, rule.init(params))
  jax.tree.map(np.testing.assert_array_equal, u_with, u_without)


def test_state_shapes_and_dtype_of_updates(phi):
  params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones((4,), jnp.float32)}
  rule = learned_rule(phi)
  state = rule.init(params)
  assert state.hidden[0]["w"].shape == (20, 2, 3) and state.cell[1]["b"].shape == (20, 4)
  updates, new_state = rule.update(params, state)
  assert updates["w"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
  assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == jax.tree.map(
      lambda x: (x.shape, x.dtype), state)


def test_learned_step_is_what_the_transform_runs(phi):
  params = _params()
  rule = learned_rule(phi)
  state = rule.init(params)
  a, sa = rule.update(params, state)
  b, sb = learned_step(phi, LSTMConfig(), params, state)
  jax.tree.map(np.testing.assert_array_equal, (a, sa), (b, sb))


@pytest.mark.parametrize("preprocessing", ["none", "rnnprop"])
def test_flattened_coordinates_give_the_same_updates_and_state_shapes(preprocessing):
  # Meta-training runs the rule with each leaf flattened (faster on CPU); the updates and
  # the state must be those of the leaf-shaped rule, over several steps, in the same shapes.
  config = LSTMConfig(preprocessing=preprocessing)
  phi = jax.tree.map(lambda x: 3.0 * x, init_meta_params(config, jax.random.key(0)))
  params = {"w": jnp.linspace(-1.0, 1.0, 24).reshape(2, 3, 4), "b": jnp.array([0.5, -0.5]),
            "s": jnp.array(0.3)}
  shaped, flat = learned_rule(phi, config), learned_rule(phi, config, flatten_coordinates=True)
  s1, s2 = shaped.init(params), flat.init(params)
  for t in range(3):
    grads = jax.tree.map(lambda p: jnp.sin(p * (t + 1)), params)
    u1, s1 = jax.jit(shaped.update)(grads, s1)
    u2, s2 = jax.jit(flat.update)(grads, s2)
    assert jax.tree.map(jnp.shape, (u1, s1)) == jax.tree.map(jnp.shape, (u2, s2))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
                 (u1, s1), (u2, s2))
  assert float(jnp.abs(u1["w"]).max()) > 0


def test_non_float_params_are_rejected_with_the_leaf_named(phi):
  rule = learned_rule(phi)
  with pytest.raises(TypeError, match=r"\['step'\].*int32.*floating-point"):
    rule.init({"w": jnp.ones(3), "step": jnp.array(1, jnp.int32)})
  with pytest.raises(TypeError, match="type str"):
    rule.init({"w": jnp.ones(3), "name": "abc"})


def test_gradient_structure_mismatch_is_rejected(phi):
  rule = learned_rule(phi)
  state = rule.init(_params())
  with pytest.raises(ValueError, match="pytree structure differs"):
    rule.update({"w": jnp.ones((2, 3))}, state)
  with pytest.raises(ValueError, match=r"shape \(3, 2\).*\(2, 3\)"):
    rule.update({"w": jnp.ones((3, 2)), "b": jnp.ones(2)}, state)
