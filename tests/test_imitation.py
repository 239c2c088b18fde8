import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt.imitation import Imitation, ImitationState, imitating, update_distance
from metaopt.meta_train import (MetaTrainConfig, init_train_state, make_meta_step, start_runs,
                                truncated_meta_loss)
from metaopt.networks import LSTMConfig, init_meta_params
from metaopt.problems import QuadraticFamily
from metaopt.unroll import unroll


def _grads(i):
  return {"a": jnp.array([1.0, -2.0, 0.5]) * (i + 1), "b": jnp.array([[0.3, -0.1]]) / (i + 1)}


def test_imitating_applies_the_rule_or_the_teacher_and_sums_the_relative_distance():
  phi = init_meta_params(LSTMConfig(), jax.random.key(0))
  rule, teacher = metaopt.learned_rule(phi), optax.adam(0.1)
  opt = imitating(rule, teacher)
  params = jax.tree.map(jnp.zeros_like, _grads(0))
  update = jax.jit(opt.update)
  for imitate in (False, True):
    state = opt.init(params)._replace(imitate=jnp.asarray(imitate))
    rule_state, teacher_state, expected_error = rule.init(params), teacher.init(params), 0.0
    for i in range(3):
      updates, state = update(_grads(i), state)
      own, rule_state = rule.update(_grads(i), rule_state)
      target, teacher_state = teacher.update(_grads(i), teacher_state)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
                   updates, target if imitate else own)
      diff = sum(float(jnp.sum((u - t) ** 2)) for u, t in zip(jax.tree.leaves(own),
                                                                jax.tree.leaves(target)))
      expected_error += diff / sum(float(jnp.sum(t ** 2)) for t in jax.tree.leaves(target))
      np.testing.assert_allclose(state.error, expected_error, rtol=1e-5)
  np.testing.assert_allclose(update_distance({"w": jnp.array([1.0, 0.0])},
                                             {"w": jnp.array([2.0, 0.0])}), 0.25, rtol=1e-6)


def test_imitation_runs_contribute_their_weighted_imitation_error_to_the_meta_loss():
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  phi = init_meta_params(config, jax.random.key(0))
  imitation = Imitation(prob=0.5, learning_rate=0.1, weight=3.0)
  tasks, runs = start_runs(fam, config, phi, jax.random.key(1), 8, imitation)
  assert isinstance(runs.opt_state, ImitationState)
  flags = np.asarray(runs.opt_state.imitate)
  assert 0 < flags.sum() < 8                          # both kinds of runs in the batch
  loss_fn = jax.jit(lambda p, r: truncated_meta_loss(p, config, fam, tasks, r, 4,
                                                     imitation=imitation))
  total, (new_runs, losses) = loss_fn(phi, runs)
  error = np.asarray(new_runs.opt_state.error - runs.opt_state.error)
  per_run = np.where(flags, 3.0 * error, np.asarray(losses)[:, 1:].sum(axis=1))
  np.testing.assert_allclose(total, per_run.mean(), rtol=1e-5)
  # Imitation runs follow Adam: their losses match a plain Adam unroll of the same problems.
  _, adam_runs = start_runs(fam, config, phi, jax.random.key(1), 8)
  adam = optax.adam(0.1)
  adam_runs = adam_runs._replace(opt_state=jax.vmap(adam.init)(adam_runs.params))
  _, adam_losses = jax.vmap(lambda t, r: unroll(adam, fam, t, r, 4))(tasks, adam_runs)
  np.testing.assert_allclose(np.asarray(losses)[flags], np.asarray(adam_losses)[flags], rtol=1e-5)
  assert not np.allclose(np.asarray(losses)[~flags], np.asarray(adam_losses)[~flags])


def test_a_rate_range_gives_each_imitation_run_its_own_adam_rate_drawn_log_uniformly():
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  phi = init_meta_params(config, jax.random.key(0))
  imitation = MetaTrainConfig(imitation_prob=1.0, imitation_learning_rate=0.01,
                              imitation_max_learning_rate=0.1).imitation()
  assert imitation.max_learning_rate == 0.1
  tasks, runs = jax.jit(lambda k: start_runs(fam, config, phi, k, 64, imitation))(
      jax.random.key(1))
  rates = np.asarray(runs.opt_state.teacher.hyperparams["learning_rate"])
  assert rates.shape == (64,) and rates.min() >= 0.01 and rates.max() <= 0.1
  log_rates = np.log10(rates)                       # uniform on [-2, -1]: mean -1.5, both halves
  assert abs(log_rates.mean() + 1.5) < 0.1 and 20 < np.sum(log_rates < -1.5) < 44
  # Each run follows Adam at its own rate.
  _, (_, losses) = jax.jit(lambda p, r: truncated_meta_loss(p, config, fam, tasks, r, 3,
                                                            imitation=imitation))(phi, runs)
  for i in (0, 1):
    adam = optax.adam(float(rates[i]))
    run = jax.tree.map(lambda x: x[i], runs)
    run = run._replace(opt_state=adam.init(run.params))
    _, expected = unroll(adam, fam, jax.tree.map(lambda x: x[i], tasks), run, 3)
    np.testing.assert_allclose(losses[i], expected, rtol=1e-5)
  assert not np.allclose(losses[0], losses[1])
  with pytest.raises(ValueError, match="imitation_max_learning_rate must be None or above"):
    MetaTrainConfig(imitation_learning_rate=0.1, imitation_max_learning_rate=0.1)


def test_meta_training_on_imitation_runs_only_brings_the_rule_closer_to_adam():
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  cfg = MetaTrainConfig(horizon=10, unroll_length=10, batch_size=16, num_meta_steps=40,
                        meta_learning_rate=1e-2, imitation_prob=1.0, imitation_learning_rate=0.1)
  state = init_train_state(fam, config, cfg)
  assert bool(jnp.all(state.runs.opt_state.imitate))
  meta_step = make_meta_step(config, cfg)
  fresh = state
  first = None
  for _ in range(cfg.num_meta_steps):
    # The same imitation runs each meta-step, so the meta-losses are comparable.
    state, metrics = meta_step(fam, state._replace(runs=fresh.runs))
    first = float(metrics["meta_loss"]) if first is None else first
  _, metrics = meta_step(fam, state._replace(runs=fresh.runs))
  assert float(metrics["meta_loss"]) < 0.5 * first, (first, float(metrics["meta_loss"]))


def test_imitation_is_off_by_default_and_bad_settings_are_rejected():
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  cfg = MetaTrainConfig(horizon=4, unroll_length=2, batch_size=2, num_valid_problems=2)
  assert cfg.imitation() is None
  assert not isinstance(init_train_state(fam, config, cfg).runs.opt_state, ImitationState)
  for kwargs, message in ((dict(imitation_prob=1.5), "imitation_prob must be in"),
                          (dict(imitation_learning_rate=0.0), "imitation_learning_rate must be"),
                          (dict(imitation_weight=-1.0), "imitation_weight must be")):
    with pytest.raises(ValueError, match=message):
      MetaTrainConfig(**kwargs)
