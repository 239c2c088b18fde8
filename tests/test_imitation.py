"""Imitation of Adam (Chen et al. 2020): the optimizer of an imitation run and its value."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import Imitation, MetaTrainConfig, Objective, TruncatedBackprop, Truncation
from metaopt.meta_step import prepare
from metaopt.networks import LSTMConfig, init_meta_params
from metaopt.objectives import ImitationState, imitating, update_distance
from metaopt.problems import QuadraticFamily
from metaopt.unroll import UnrollState, unroll


def _grads(i):
  return {"a": jnp.array([1.0, -2.0, 0.5]) * (i + 1), "b": jnp.array([[0.3, -0.1]]) / (i + 1)}


def _close(a, b, rtol=1e-5, atol=1e-7):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_imitating_applies_the_rule_or_the_teacher_and_advances_both_states():
  phi = init_meta_params(LSTMConfig(), jax.random.key(0))
  rule, teacher = metaopt.learned_rule(phi), optax.adam(0.1)
  params = jax.tree.map(jnp.zeros_like, _grads(0))
  for imitate in (False, True):
    opt = imitating(rule, teacher, jnp.asarray(imitate))
    update = jax.jit(opt.update)
    state = opt.init(params)
    assert isinstance(state, ImitationState)
    rule_state, teacher_state = rule.init(params), teacher.init(params)
    for i in range(3):
      updates, state = update(_grads(i), state, params)
      own, rule_state = rule.update(_grads(i), rule_state, params)
      target, teacher_state = teacher.update(_grads(i), teacher_state, params)
      _close(updates, target if imitate else own)
      assert not np.allclose(jax.tree.leaves(own)[0], jax.tree.leaves(target)[0])
      # Both states advance on the same gradients, whichever updates are applied.
      _close(state.rule, rule_state)
      _close(state.teacher, teacher_state)
  np.testing.assert_allclose(update_distance({"w": jnp.array([1.0, 0.0])},
                                             {"w": jnp.array([2.0, 0.0])}), 0.25, rtol=1e-6)
  # Summed over all leaves: |(1, 0) - (2, 0)|^2 / (|(2, 0)|^2 + |(0, 3)|^2).
  np.testing.assert_allclose(
      update_distance({"a": jnp.array([1.0, 0.0]), "b": jnp.array([[0.0, 3.0]])},
                      {"a": jnp.array([2.0, 0.0]), "b": jnp.array([[0.0, 3.0]])}),
      1.0 / 13.0, rtol=1e-6)


def _replay(rule, fam, task, run, rate, imitate, num_steps):
  """One run by hand: losses f(theta_0..T) and the summed distance of the rule's updates to
  Adam's, the optimizee following Adam if ``imitate`` and the rule otherwise."""
  teacher = optax.adam(rate)
  params, rule_state, teacher_state = run.params, run.opt_state.rule, run.opt_state.teacher
  losses, distance = [], 0.0
  for t in range(num_steps):
    key = jax.random.fold_in(run.key, t)
    loss, grads = jax.value_and_grad(lambda p: fam.loss(p, (), task, key)[0])(params)
    own, rule_state = rule.update(grads, rule_state, params)
    target, teacher_state = teacher.update(grads, teacher_state, params)
    distance += update_distance(own, target)
    params = optax.apply_updates(params, jax.tree.map(lambda a, b: jnp.where(imitate, a, b),
                                                      target, own))
    losses.append(loss)
  losses.append(fam.loss(params, (), task, jax.random.fold_in(run.key, num_steps))[0])
  return jnp.stack(losses), distance


def test_imitation_runs_contribute_their_weighted_distance_to_adam_to_the_meta_loss():
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  phi = init_meta_params(config, jax.random.key(0))
  est = TruncatedBackprop(config, Objective(imitation=Imitation(0.5, 0.1, weight=3.0)),
                          unroll_length=4, batch_size=8)
  runs = jax.jit(est.start_runs)(phi, fam, jax.random.key(1))
  assert isinstance(runs.states.opt_state, ImitationState)
  flags = np.asarray(runs.settings.imitate)
  assert 0 < flags.sum() < 8                          # both kinds of runs in the batch
  np.testing.assert_allclose(runs.settings.teacher_rate, 0.1)
  total, (after, losses) = jax.jit(est.meta_loss)(phi, fam, runs)
  assert losses.shape == (8, 5)
  np.testing.assert_array_equal(after.states.step, 4)
  replay = jax.jit(jax.vmap(lambda task, run, setting: _replay(
      est.rule(phi), fam, task, run, setting.teacher_rate, setting.imitate, 4)))
  expected_losses, distances = replay(runs.tasks, runs.states, runs.settings)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(distances) > 0)
  per_run = np.where(flags, 3.0 * np.asarray(distances), np.asarray(losses)[:, 1:].sum(axis=1))
  np.testing.assert_allclose(total, per_run.mean(), rtol=1e-5)
  # Imitation runs follow Adam: their losses match a plain Adam unroll of the same problems.
  adam = optax.adam(0.1)
  adam_runs = runs.states._replace(opt_state=jax.vmap(adam.init)(runs.states.params))
  _, adam_losses = jax.vmap(lambda t, r: unroll(adam, fam, t, r, 4))(runs.tasks, adam_runs)
  np.testing.assert_allclose(np.asarray(losses)[flags], np.asarray(adam_losses)[flags], rtol=1e-5)
  assert not np.allclose(np.asarray(losses)[~flags], np.asarray(adam_losses)[~flags])


def test_a_rate_range_gives_each_imitation_run_its_own_adam_rate_drawn_log_uniformly():
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  phi = init_meta_params(config, jax.random.key(0))
  imitation = Imitation(prob=1.0, learning_rate=0.01, max_learning_rate=0.1)
  est = TruncatedBackprop(config, Objective(imitation=imitation), unroll_length=3, batch_size=64)
  runs = jax.jit(est.start_runs)(phi, fam, jax.random.key(1))
  assert bool(np.all(runs.settings.imitate))
  rates = np.asarray(runs.settings.teacher_rate)
  assert rates.shape == (64,) and rates.min() >= 0.01 and rates.max() <= 0.1
  log_rates = np.log10(rates)                       # uniform on [-2, -1]: mean -1.5, both halves
  assert abs(log_rates.mean() + 1.5) < 0.1 and 20 < np.sum(log_rates < -1.5) < 44
  # Each run follows Adam at its own rate.
  _, (_, losses) = jax.jit(est.meta_loss)(phi, fam, runs)
  for i in (0, 1):
    adam = optax.adam(float(rates[i]))
    run = jax.tree.map(lambda x: x[i], runs.states)
    run = run._replace(opt_state=adam.init(run.params))
    _, expected = unroll(adam, fam, jax.tree.map(lambda x: x[i], runs.tasks), run, 3)
    np.testing.assert_allclose(losses[i], expected, rtol=1e-5)
  assert not np.allclose(losses[0], losses[1])


def test_meta_training_on_imitation_runs_only_brings_the_rule_closer_to_adam():
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  cfg = MetaTrainConfig(truncation=Truncation(horizon=10, unroll_length=10), batch_size=16,
                        num_meta_steps=40, meta_learning_rate=1e-2,
                        objective=Objective(imitation=Imitation(prob=1.0, learning_rate=0.1)))
  _, _, state, meta_step = prepare(fam, config, cfg)
  assert bool(jnp.all(state.runs.settings.imitate))
  fresh = state.runs
  first = None
  for _ in range(cfg.num_meta_steps):
    # The same imitation runs each meta-step, so the meta-losses are comparable.
    state, metrics = meta_step(fam, state._replace(runs=fresh))
    assert bool(metrics["finite"])
    first = float(metrics["meta_loss"]) if first is None else first
  _, metrics = meta_step(fam, state._replace(runs=fresh))
  assert float(metrics["meta_loss"]) < 0.5 * first, (first, float(metrics["meta_loss"]))


def test_imitation_is_off_by_default_and_bad_settings_are_rejected():
  fam, config = QuadraticFamily(dim=3), LSTMConfig((4,))
  cfg = MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), batch_size=2)
  assert cfg.objective.imitation is None
  runs = prepare(fam, config, cfg).state.runs
  assert runs.settings == ()
  assert isinstance(runs.states, UnrollState)
  assert not isinstance(runs.states.opt_state, ImitationState)
  for kwargs, message in ((dict(learning_rate=0.0), "Imitation.learning_rate must be > 0"),
                          (dict(weight=-1.0), "Imitation.weight must be > 0"),
                          (dict(prob=-0.1), "Imitation.prob must be in")):
    with pytest.raises(ValueError, match=message):
      Imitation(**{"prob": 0.5, "learning_rate": 0.01, **kwargs})
