import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

import metaopt
from metaopt.problems import QuadraticFamily
from metaopt.rule import learned_rule
from metaopt.unroll import init_unroll, jitted_loss_curves, sample_tasks, unroll


def test_two_unrolls_of_ten_equal_one_of_twenty(phi):
  fam = QuadraticFamily(dim=5)
  task = fam.sample_task(jax.random.key(0))
  rule = learned_rule(jax.tree.map(lambda x: 2.0 * x, phi))
  run = jax.jit(unroll, static_argnums=(0, 4))
  state = init_unroll(rule, fam, task, jax.random.key(1))
  full_state, full = run(rule, fam, task, state, 20)
  mid_state, first = run(rule, fam, task, state, 10)
  end_state, second = run(rule, fam, task, mid_state, 10)
  assert full.shape == (21,) and first.shape == (11,)
  np.testing.assert_allclose(jnp.concatenate([first, second[1:]]), full, rtol=1e-6)
  np.testing.assert_allclose(first[-1], second[0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               end_state._replace(key=None), full_state._replace(key=None))
  assert int(end_state.step) == 20


def _meta_grad_of_sgd_rate(family, rate, second_order):
  task = family.sample_task(jax.random.key(0))

  def meta_loss(a):
    opt = optax.sgd(a)
    state = init_unroll(opt, family, task, jax.random.key(1))
    return jnp.sum(unroll(opt, family, task, state, 2, second_order=second_order)[1][1:])

  return float(jax.jit(jax.grad(meta_loss))(rate))


def test_first_and_second_order_meta_gradients_match_hand_derivation(scalar_family):
  # f(x) = x^2, x0 = 1, SGD with rate a: x1 = x0 - a g0, x2 = x1 - a g1, g = 2x.
  # L(a) = f(x1) + f(x2).
  a = 0.1
  x0 = 1.0
  g0 = 2 * x0
  x1 = x0 - a * g0
  g1 = 2 * x1
  x2 = x1 - a * g1
  dx1 = -g0
  first = 2 * x1 * dx1 + 2 * x2 * (dx1 - g1)               # g1 treated as a constant
  second = 2 * x1 * dx1 + 2 * x2 * (dx1 - g1 - a * 2 * dx1)  # dg1/da = f''(x1) dx1/da
  assert _meta_grad_of_sgd_rate(scalar_family, a, False) == pytest.approx(first, rel=1e-5)
  assert _meta_grad_of_sgd_rate(scalar_family, a, True) == pytest.approx(second, rel=1e-5)
  assert abs(first - second) > 0.1


def test_second_order_flag_changes_the_learned_rules_meta_gradient(phi):
  fam = QuadraticFamily(dim=4)
  task = fam.sample_task(jax.random.key(0))
  phi = jax.tree.map(lambda x: 3.0 * x, phi)

  def meta_grad(second_order):
    def loss(phi):
      rule = learned_rule(phi)
      state = init_unroll(rule, fam, task, jax.random.key(1))
      return jnp.sum(unroll(rule, fam, task, state, 5, second_order=second_order)[1][1:])
    return jax.jit(jax.grad(loss))(phi)

  g1, g2 = meta_grad(False), meta_grad(True)
  diff = optax.tree.norm(jax.tree.map(jnp.subtract, g1, g2))
  assert float(diff) > 1e-3 * float(optax.tree.norm(g1))
  assert bool(jnp.isfinite(diff))


def test_loss_curves_vmapped_and_hand_designed_optimizers_share_the_unroll():
  fam = QuadraticFamily()
  tasks, keys = sample_tasks(fam, jax.random.key(0), 8)
  curves = jitted_loss_curves(optax.adam, fam, tasks, keys, 30, (jnp.float32(0.1),))[0]
  assert curves.shape == (8, 31)
  # Initial loss of run i is f_i(theta_0): independent of the optimizer.
  sgd = jitted_loss_curves(optax.sgd, fam, tasks, keys, 30, (jnp.float32(0.01),))[0]
  np.testing.assert_allclose(curves[:, 0], sgd[:, 0], rtol=1e-6)
  assert float(curves[:, -1].mean()) < 0.5 * float(curves[:, 0].mean())


def test_remat_gives_the_same_meta_gradient(phi):
  fam = QuadraticFamily(dim=3)
  task = fam.sample_task(jax.random.key(0))

  def grad(remat):
    def loss(phi):
      rule = learned_rule(phi)
      state = init_unroll(rule, fam, task, jax.random.key(1))
      return jnp.sum(unroll(rule, fam, task, state, 6, remat=remat)[1])
    return jax.jit(jax.grad(loss))(phi)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grad(False), grad(True))


def test_reused_gradient_gives_the_plain_autodiff_first_order_meta_gradient(phi):
  # The unroll routes f(theta_t) through value_with_gradient (its derivative is the
  # grad_t already computed); the meta-gradient must equal differentiating f again.
  from metaopt.problems import MLPFamily
  rng = np.random.default_rng(0)
  fam = MLPFamily.from_arrays(rng.integers(0, 256, (64, 4, 4, 1), dtype=np.uint8),
                              rng.integers(0, 10, 64), hidden_sizes=(3,), batch_size=8,
                              init_scale=0.5)
  task = fam.sample_task(jax.random.key(0))
  config = metaopt.LSTMConfig(preprocessing="log_sign", output_scale=0.5)
  phi = jax.tree.map(lambda x: 3.0 * x, metaopt.init_meta_params(config, jax.random.key(3)))

  def plain_unroll_loss(phi):  # the textbook first-order unroll, differentiated twice through f
    rule = learned_rule(phi, config)
    state = init_unroll(rule, fam, task, jax.random.key(1))
    def step(carry, _):
      params, opt_state, t = carry
      key = jax.random.fold_in(state.key, t)
      (loss, _), grads = jax.value_and_grad(fam.loss, has_aux=True)(params, (), task, key)
      updates, opt_state = rule.update(jax.lax.stop_gradient(grads), opt_state)
      return (optax.apply_updates(params, updates), opt_state, t + 1), loss
    (params, _, t), losses = jax.lax.scan(step, (state.params, state.opt_state, 0), length=6)
    last = fam.loss(params, (), task, jax.random.fold_in(state.key, t))[0]
    return jnp.sum(losses[1:]) + last

  def unroll_loss(phi):
    rule = learned_rule(phi, config)
    state = init_unroll(rule, fam, task, jax.random.key(1))
    return jnp.sum(unroll(rule, fam, task, state, 6)[1][1:])

  np.testing.assert_allclose(jax.jit(unroll_loss)(phi), jax.jit(plain_unroll_loss)(phi), rtol=1e-6)
  expected = jax.jit(jax.grad(plain_unroll_loss))(phi)
  got = jax.jit(jax.grad(unroll_loss))(phi)
  assert float(optax.tree.norm(expected)) > 1e-4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), got, expected)


@pytest.mark.parametrize("num_runs", [1, 2])
def test_every_run_mode_gives_what_vmap_gives_numbers_and_meta_gradients(num_runs):
  # map_runs calls fn directly on one run (vmap's size-1 batch axis slows XLA:CPU), loops over
  # runs ("map") or writes them out in turn ("sequential"); outputs, their leading axis and the
  # meta-gradient must be those of jax.vmap.
  from metaopt.problems import MLPFamily
  from metaopt.unroll import map_runs
  rng = np.random.default_rng(0)
  fam = MLPFamily.from_arrays(rng.integers(0, 256, (64, 4, 4, 1), dtype=np.uint8),
                              rng.integers(0, 10, 64), hidden_sizes=(3,), batch_size=8)
  config = metaopt.LSTMConfig(preprocessing="log_sign", output_scale=0.5)
  phi = jax.tree.map(lambda x: 3.0 * x, metaopt.init_meta_params(config, jax.random.key(3)))
  tasks, keys = sample_tasks(fam, jax.random.key(0), num_runs)

  def run(phi, task, key):
    rule = learned_rule(phi, config, flatten_coordinates=True)
    state, losses = unroll(rule, fam, task, init_unroll(rule, fam, task, key), 5)
    return jnp.sum(losses), state

  def total(phi, mapper):
    totals, states = mapper(lambda t, k: run(phi, t, k), tasks, keys)
    return jnp.sum(totals), (totals, states)

  def value_and_grad(mapper):
    return jax.jit(jax.value_and_grad(lambda p: total(p, mapper), has_aux=True))(phi)

  numbers = lambda s, g: jax.tree.leaves((s._replace(key=jax.random.key_data(s.key)), g))
  (b, (totals_v, states_v)), grad_v = value_and_grad(lambda fn, *args: jax.vmap(fn)(*args))
  assert float(optax.tree.norm(grad_v)) > 0
  # One run takes the same direct path in every mode; two runs: mode "vmap" is jax.vmap itself.
  for mode in ("vmap",) if num_runs == 1 else ("map", "sequential"):
    (a, (totals, states)), grad = value_and_grad(
        lambda fn, *args: map_runs(fn, *args, mode=mode))
    assert totals.shape == (num_runs,), mode
    assert jax.tree.map(jnp.shape, states) == jax.tree.map(jnp.shape, states_v), mode
    np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=mode)
    for x, y in zip(numbers(states, grad), numbers(states_v, grad_v)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=mode)
  with pytest.raises(ValueError, match="mode must be one of"):
    map_runs(lambda t, k: t, tasks, keys, mode="parallel")


def test_a_family_without_a_run_mode_is_named_in_the_error():
  class Bare(struct.PyTreeNode):
    def sample_task(self, key):
      return jnp.zeros(())

    def init(self, task, key):
      return jnp.zeros(2), ()

    def loss(self, params, model_state, task, key):
      return jnp.sum(params ** 2), model_state

  tasks, keys = sample_tasks(Bare(), jax.random.key(0), 2)
  with pytest.raises(TypeError, match="Bare must declare run_mode"):
    metaopt.loss_curves(optax.sgd(0.1), Bare(), tasks, keys, 2)
