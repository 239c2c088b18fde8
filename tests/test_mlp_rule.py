"""The per-parameter MLP rule family: optax contract, state size, scale-free features, step-size
range, dispatch (phi, configs, checkpoints) and a short meta-training."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import MetaTrainConfig, MLPRuleConfig, Truncation, Validation, meta_train
from metaopt.meta_step import prepare
from metaopt.mlp_network import FUSED_MAX_WEIGHTS, _dense_layers, _mlp_by_dots, mlp_apply
from metaopt.mlp_rule import mlp_step
from metaopt.networks import config_from_dict
from metaopt.problems import QuadraticFamily
from metaopt.rule import learned_rule
from metaopt.unroll import sample_tasks
from metaopt.validation import validation_score

# Every feature (the defaults with a smaller hidden layer, to compile fast), and the fewest;
# BY_DOTS is too large to run fused (matrix products both ways).
BY_DOTS = MLPRuleConfig(hidden_sizes=(24, 24), momentum_decays=(0.9, 0.99))
CONFIGS = {
    "full": MLPRuleConfig(hidden_sizes=(8,)),
    "plain": MLPRuleConfig(hidden_sizes=(4, 4), momentum_decays=(0.9,), factored=False,
                           use_params=False, time_scales=()),
    "distance": MLPRuleConfig(hidden_sizes=(4,), adam_base_decay=0.9, distance_scope="leaf"),
}


def _phi(config, scale=30.0):
  """phi with a large output layer, so updates are far from zero."""
  phi = metaopt.init_meta_params(config, jax.random.key(0))
  out = phi["params"]["output"]
  out["kernel"] = scale * out["kernel"]
  return phi


@pytest.fixture(params=sorted(CONFIGS))
def config(request):
  return CONFIGS[request.param]


@pytest.fixture
def rule(config):
  return learned_rule(_phi(config), config)


def _params(dtype=jnp.float32):
  return {"w": jnp.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(3, 4), "b": jnp.ones(4, dtype),
          "s": jnp.asarray(0.5, dtype)}


def _grads(params):
  return jax.tree.map(lambda p: jnp.sin(3.0 * p) + 0.1, params)


def test_extra_kwargs_under_jit_and_no_recompilation(rule):
  params = _params()
  update = jax.jit(lambda g, s, p: rule.update(g, s, p, some_unexpected_argument=jnp.ones(2)))
  state = rule.init(params)
  updates, state = update(_grads(params), state, params)
  chex.assert_trees_all_equal_shapes(updates, params)
  assert float(jnp.abs(updates["w"]).max()) > 0
  params = optax.apply_updates(params, updates)
  update(_grads(params), state, params)
  assert update._cache_size() == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtype_preservation_and_stable_state(rule, dtype):
  params = _params(dtype)
  state = rule.init(params)
  updates, new_state = jax.jit(rule.update)(_grads(params), state, params)
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
  # So lax.cond between the update and an identity type-checks.
  cond = lambda flag, g, s, p: jax.lax.cond(flag, lambda: rule.update(g, s, p)[1], lambda: s)
  jax.jit(cond)(True, _grads(params), state, params)


def test_init_accepts_shape_dtype_structs(rule, config):
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), _params())
  state = jax.eval_shape(rule.init, abstract)
  assert state.second_moment["w"].shape == (3, 4) and state.momenta[0]["b"].dtype == jnp.float32
  if config.factored:
    assert state.row["w"].shape == (3,) and state.col["w"].shape == (4,)
    assert state.row["b"].shape == state.col["s"].shape == ()


def test_tree_map_params(rule):
  params = _params()
  state = rule.init(params)
  mapped = optax.tree.map_params(rule, lambda x: jnp.full_like(x, 7.0), state)
  assert all(bool(jnp.all(x == 7.0))
             for x in jax.tree.leaves((mapped.momenta, mapped.second_moment)))
  assert int(mapped.count) == 0
  names = {"w": "W", "b": "B", "s": "S"}
  specs = optax.tree.map_params(rule, lambda _, spec: spec, state, names,
                                transform_non_params=lambda _: None)
  assert specs.second_moment == names and specs.momenta[-1] == names and specs.count is None


def test_inject_hyperparams_scales_like_the_factory_argument(config):
  params, phi = _params(), _phi(config)
  plain = learned_rule(phi, config, learning_rate_multiplier=0.3)
  injected = optax.inject_hyperparams(learned_rule, static_args=("config",))(
      phi, config, learning_rate_multiplier=0.3)
  u1, _ = jax.jit(plain.update)(_grads(params), plain.init(params), params)
  u2, _ = jax.jit(injected.update)(_grads(params), injected.init(params), params)
  chex.assert_trees_all_close(u1, u2)
  state = injected.init(params)
  state.hyperparams["learning_rate_multiplier"] = jnp.asarray(0.6)
  u3, _ = jax.jit(injected.update)(_grads(params), state, params)
  chex.assert_trees_all_close(jax.tree.map(lambda x: 2 * x, u1), u3, rtol=1e-6)


def test_masked_partition_and_multi_steps(rule):
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4), "count": jnp.array(3, jnp.int32)}
  grads = {"w": jnp.full((3, 4), 0.5), "b": jnp.full(4, 0.5), "count": jnp.array(0, jnp.int32)}
  alone, _ = jax.jit(rule.update)({"w": grads["w"]}, rule.init({"w": params["w"]}),
                                  {"w": params["w"]})
  opt = optax.partition({"learned": rule, "adam": optax.adam(0.1),
                         "frozen": optax.set_to_zero()}, {"w": "learned", "b": "adam",
                                                          "count": "frozen"})
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  chex.assert_trees_all_close(updates["w"], alone["w"])
  chex.assert_trees_all_close(updates["b"], jnp.full(4, -0.1), rtol=1e-5)
  float_params = {"w": params["w"], "b": params["b"]}
  masked = optax.masked(rule, {"w": True, "b": False})
  u, _ = jax.jit(masked.update)({"w": grads["w"], "b": grads["b"]}, masked.init(float_params),
                                float_params)
  chex.assert_trees_all_close(u["w"], alone["w"])
  chex.assert_trees_all_equal(u["b"], grads["b"])
  multi = optax.MultiSteps(rule, every_k_schedule=2)
  state = multi.init(float_params)
  for _ in range(2):
    u, state = jax.jit(multi.update)({"w": grads["w"], "b": grads["b"]}, state, float_params)
  expected, _ = jax.jit(rule.update)({"w": grads["w"], "b": grads["b"]},
                                     rule.init(float_params), float_params)
  chex.assert_trees_all_close(u, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["default", *sorted(CONFIGS)])
def test_state_is_at_most_32_bytes_per_parameter(name):
  config = CONFIGS.get(name, MLPRuleConfig())
  params = {"w": jnp.zeros((100, 10)), "b": jnp.zeros(17)}
  rule = learned_rule(_phi(config), config)
  state = rule.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      state, jax.jit(rule.update)(_grads(params), state, params)[1])
  n = 100 * 10 + 17
  factored = 4 * (100 + 10 + 1 + 1) if config.factored else 0   # rows + cols; b: two scalars
  distance = 4 * 2 * 2 if config.distance_scope == "leaf" else 0   # r and D of each leaf
  total = sum(x.nbytes for x in jax.tree.leaves(state))
  assert total == config.state_bytes_per_parameter * n + factored + distance + 4  # + the count
  assert total / n <= 32
  assert MLPRuleConfig().state_bytes_per_parameter == 16


@pytest.mark.parametrize("config", [*CONFIGS.values(), BY_DOTS], ids=[*CONFIGS, "by_dots"])
def test_flattened_coordinates_and_learned_step_give_the_same_updates(config):
  params, phi = _params(), _phi(config)
  rule = learned_rule(phi, config)
  flat = learned_rule(phi, config, flatten_coordinates=True)
  state = rule.init(params)
  u1, s1 = jax.jit(rule.update)(_grads(params), state, params)
  u2, s2 = jax.jit(flat.update)(_grads(params), state, params)
  u3, s3 = jax.jit(mlp_step, static_argnums=1)(phi, config, _grads(params), state, params)
  chex.assert_trees_all_close((u1, s1), (u2, s2), rtol=1e-6)
  # Matrix products in another program may sum in another order (f32: ~1e-5 apart on AVX2).
  chex.assert_trees_all_close((u1, s1), (u3, s3), rtol=1e-4)


@pytest.mark.parametrize("config", [*CONFIGS.values(), BY_DOTS], ids=[*CONFIGS, "by_dots"])
def test_the_coordinatewise_mlp_and_its_gradient_match_matrix_products(config):
  assert (config.num_weights <= FUSED_MAX_WEIGHTS) == (config != BY_DOTS)
  phi = _phi(config, scale=1.0)
  x = jax.random.normal(jax.random.key(3), (config.num_features, 3, 5))
  count = jnp.int32(4)
  weights = jax.random.normal(jax.random.key(4), (2, 3, 5))

  def loss(phi, x, by_dots):
    if by_dots:
      pre, _ = _mlp_by_dots(_dense_layers(phi, config, count), x.reshape(x.shape[0], -1))
      d, m = pre[-1].reshape((2,) + x.shape[1:])
    else:
      d, m = mlp_apply(phi, config, x, count)
    return jnp.sum(weights[0] * d + weights[1] * jnp.tanh(m))

  chex.assert_trees_all_close(loss(phi, x, False), loss(phi, x, True), rtol=1e-5)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  chex.assert_trees_all_close(grads(phi, x, False), grads(phi, x, True), rtol=1e-4, atol=1e-6)
  # Under vmap (meta-training maps runs) the custom gradient batches too.
  batched = jax.vmap(lambda x: grads(phi, x, False)[0])(jnp.stack([x, 2 * x]))
  chex.assert_trees_all_close(jax.tree.map(lambda g: g[1], batched), grads(phi, 2 * x, False)[0],
                              rtol=1e-5, atol=1e-6)


def test_updates_are_invariant_to_a_positive_rescaling_of_the_gradients():
  config = CONFIGS["full"]
  rule = learned_rule(_phi(config), config)
  params = _params()
  update = jax.jit(rule.update)

  def run(scale):
    state, out = rule.init(params), []
    for step in range(4):
      g = jax.tree.map(lambda p: scale * jnp.sin(3.0 * p + step), params)
      u, state = update(g, state, params)
      out.append(u)
    return out

  base = run(1.0)
  assert float(jnp.abs(base[-1]["w"]).max()) > 0
  for scale in (1e-3, 1e3):
    chex.assert_trees_all_close(run(scale), base, rtol=1e-4, atol=1e-9)


def test_the_step_size_spans_orders_of_magnitude_with_the_log_magnitude_output():
  config = CONFIGS["full"]
  params = _params()

  @jax.jit
  def updates(m):
    phi = _phi(config)
    phi["params"]["output"]["bias"] = jnp.stack([0.0, m])
    rule = learned_rule(phi, config)
    return rule.update(_grads(params), rule.init(params), params)[0]["w"]

  small, mid, large = updates(-5.0), updates(0.0), updates(5.0)
  np.testing.assert_allclose(large, mid * np.exp(5.0 * config.exp_mult), rtol=1e-5)
  np.testing.assert_allclose(small, mid * np.exp(-5.0 * config.exp_mult), rtol=1e-5)
  assert float(jnp.max(jnp.abs(large)) / jnp.max(jnp.abs(small))) > 1e4
  # max_log_magnitude clips m from above only (phi's output kernel keeps m's spread).
  bounded = dataclasses.replace(config, max_log_magnitude=0.0)
  phi = _phi(config)
  rules = [learned_rule(phi, c) for c in (config, bounded)]
  free, clipped = [jax.jit(r.update)(_grads(params), r.init(params), params)[0]["w"]
                   for r in rules]
  # Where m <= 0 the updates agree; where m > 0 the bounded one is exp(m) times smaller.
  ratio = np.asarray(free / clipped)
  assert np.all(ratio > 1 - 1e-5)
  assert 0 < np.sum(ratio > 1.01) < ratio.size and np.any(np.abs(ratio - 1) < 1e-5)
  with pytest.raises(ValueError, match="max_log_magnitude"):
    MLPRuleConfig(max_log_magnitude=float("inf"))


def test_an_odd_direction_negates_the_update_with_the_gradient_and_stops_without_one():
  # A trained MLP may step where no gradient points (its biases); odd_direction cannot.
  free = MLPRuleConfig(hidden_sizes=(8,), adam_base_decay=0.9, distance_scope="leaf")
  odd = dataclasses.replace(free, odd_direction=True)
  phi = _phi(free)
  phi["params"]["output"]["bias"] = jnp.array([0.5, 0.3])
  params = _params()
  grads = _grads(params)
  for config, is_odd in ((free, False), (odd, True)):
    rule = learned_rule(phi, config)
    step = jax.jit(rule.update)
    u, _ = step(grads, rule.init(params), params)
    u_neg, _ = step(jax.tree.map(jnp.negative, grads), rule.init(params), params)
    u_zero, _ = step(jax.tree.map(jnp.zeros_like, grads), rule.init(params), params)
    gap = float(optax.tree.norm(jax.tree.map(jnp.add, u, u_neg)))
    if is_odd:
      assert gap <= 1e-6 * float(optax.tree.norm(u)) and float(optax.tree.norm(u_zero)) == 0
    else:
      assert gap > 1e-3 * float(optax.tree.norm(u)) and float(optax.tree.norm(u_zero)) > 0


def test_untrained_rule_takes_small_steps():
  config = MLPRuleConfig()
  rule = learned_rule(metaopt.init_meta_params(config, jax.random.key(0)), config)
  params = _params()
  updates, _ = jax.jit(rule.update)(_grads(params), rule.init(params), params)
  assert 0 < float(optax.tree.norm(updates)) < 1e-3


def test_with_an_adam_base_the_rule_with_a_silent_mlp_is_adam():
  config = MLPRuleConfig(hidden_sizes=(8,), adam_base_decay=0.9, step_mult=0.01)
  phi = metaopt.init_meta_params(config, jax.random.key(0))
  silent = jax.tree.map(jnp.zeros_like, phi["params"]["output"])
  phi = {"params": {**phi["params"], "output": silent}}
  rule = learned_rule(phi, config)
  # Adam's m / (sqrt(v) + eps) with eps folded into the root, as the rule's features do.
  adam = optax.adam(0.01, b1=0.9, b2=0.999, eps=0.0, eps_root=config.eps ** 2)
  params = _params()
  state, adam_state = rule.init(params), adam.init(params)
  for k in range(3):
    grads = _grads(jax.tree.map(lambda p: p * (k + 1.0), params))
    u, state = jax.jit(rule.update)(grads, state, params)
    want, adam_state = adam.update(grads, adam_state)
    chex.assert_trees_all_close(u, want, rtol=2e-5, atol=1e-9)
  trained = learned_rule(metaopt.init_meta_params(config, jax.random.key(0)), config)
  u, _ = jax.jit(trained.update)(grads, trained.init(params), params)
  assert float(optax.tree.norm(jax.tree.map(jnp.subtract, u, want))) > 0
  with pytest.raises(ValueError, match="adam_base_decay must be one of momentum_decays"):
    MLPRuleConfig(adam_base_decay=0.95)


def test_update_without_params_is_a_clear_error_when_the_rule_reads_them():
  rule = learned_rule(_phi(CONFIGS["full"]), CONFIGS["full"])
  params = _params()
  with pytest.raises(ValueError, match="pass them"):
    jax.jit(rule.update)(_grads(params), rule.init(params))
  with pytest.raises(TypeError, match="floating-point"):
    rule.init({"n": jnp.array(3, jnp.int32)})


def test_config_is_hashable_serializable_and_validated(tmp_path, config):
  assert hash(config) == hash(MLPRuleConfig.from_dict(config.to_dict()))
  assert config_from_dict(config.to_dict()) == config
  phi = _phi(config)
  metaopt.save_meta_params(tmp_path / "phi.msgpack", phi, config)
  loaded, loaded_config, _ = metaopt.load_meta_params(tmp_path / "phi.msgpack", config)
  assert loaded_config == config
  chex.assert_trees_all_equal(loaded, phi)
  with pytest.raises(ValueError, match="decays"):
    MLPRuleConfig(momentum_decays=(0.9, 1.0))
  with pytest.raises(ValueError, match="exp_mult"):
    MLPRuleConfig(exp_mult=0.0)
  with pytest.raises(ValueError, match="hidden_sizes"):
    MLPRuleConfig(hidden_sizes=(0,))


def test_a_short_meta_training_lowers_the_validation_loss():
  fam, config = QuadraticFamily(dim=5), MLPRuleConfig(hidden_sizes=(8,))
  cfg = MetaTrainConfig(truncation=Truncation(horizon=20, unroll_length=10), batch_size=4,
                        num_meta_steps=30, meta_learning_rate=1e-2,
                        validation=Validation(every=30, num_problems=4))
  result = meta_train(fam, config, cfg, progress=False)
  assert result.num_skipped == 0
  tasks, keys = sample_tasks(fam, jax.random.key(999), 16)
  init_phi = prepare(fam, config, cfg).state.phi
  score = lambda phi: validation_score(phi, config, fam, tasks, keys, 20, Validation())
  assert score(result.phi) < 0.9 * score(init_phi)
