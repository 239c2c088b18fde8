"""Meta-training: the loop, its composed configuration, the meta-step and validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from metaopt import (
  Imitation,
  MetaTrainConfig,
  Objective,
  TruncatedBackprop,
  Truncation,
  Validation,
  meta_train,
)
from metaopt.meta_step import prepare
from metaopt.networks import LSTMConfig
from metaopt.problems import QuadraticFamily
from metaopt.rule import learned_rule
from metaopt.unroll import jitted_loss_curves, sample_tasks
from metaopt.validation import VALIDATION_SET, validation_score

TINY = MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), batch_size=4,
                       num_meta_steps=3, validation=Validation(every=3, num_problems=4))


def _valid_set(fam, cfg):
  return sample_tasks(fam, jax.random.fold_in(jax.random.key(cfg.seed), VALIDATION_SET),
                      cfg.validation.num_problems)


def test_quick_meta_training_beats_its_own_initialization_on_held_out_quadratics():
  fam, config = QuadraticFamily(), LSTMConfig()
  cfg = MetaTrainConfig(truncation=Truncation(horizon=40, unroll_length=20), batch_size=32,
                        num_meta_steps=120, meta_learning_rate=3e-3,
                        validation=Validation(every=40, num_problems=32))
  result = meta_train(fam, config, cfg, progress=False)
  assert result.num_skipped == 0 and len(result.history.meta_loss) == 120
  tasks, keys = sample_tasks(fam, jax.random.key(999), 64)
  init_phi = prepare(fam, config, cfg).state.phi
  score = lambda phi: validation_score(phi, config, fam, tasks, keys, 40, Validation())
  assert score(result.phi) < 0.5 * score(init_phi)
  assert result.best_valid_loss == min(result.history.valid_loss)


def test_a_caller_passed_meta_optimizer_is_the_one_that_updates_phi():
  fam, config = QuadraticFamily(dim=3), LSTMConfig((8,))
  frozen = meta_train(fam, config, TINY, meta_optimizer=optax.sgd(0.0), progress=False)
  phi0 = prepare(fam, config, TINY).state.phi
  jax.tree.map(np.testing.assert_array_equal, frozen.final_phi, phi0)
  moved = meta_train(fam, config, TINY, meta_optimizer=optax.sgd(1e-3), progress=False)
  assert not np.allclose(jax.tree.leaves(moved.final_phi)[0], jax.tree.leaves(phi0)[0])


class NaNAfterFirstStep(struct.PyTreeNode):
  """A quadratic whose loss becomes NaN once theta moves: every meta-step is non-finite."""

  run_mode: str = struct.field(pytree_node=False, default="vmap")

  def sample_task(self, key):
    return jax.random.normal(key, (3,))

  def init(self, task, key):
    return jnp.zeros(3), ()

  def loss(self, params, model_state, task, key):
    value = jnp.sum((params - task) ** 2)
    return jnp.where(jnp.any(params != 0), jnp.nan, value), model_state


def test_non_finite_meta_loss_skips_the_update_and_keeps_phi_finite():
  cfg = dataclasses.replace(TINY, num_meta_steps=5,
                            validation=Validation(every=5, num_problems=4))
  phi0 = prepare(NaNAfterFirstStep(), LSTMConfig(), cfg).state.phi
  result = meta_train(NaNAfterFirstStep(), LSTMConfig(), cfg, progress=False)
  assert result.num_skipped == 5
  jax.tree.map(np.testing.assert_array_equal, result.final_phi, phi0)


@pytest.mark.parametrize("build, message", [
    (lambda: Truncation(horizon=100, unroll_length=30), "multiples of unroll_length"),
    (lambda: Truncation(horizon=20, unroll_length=10, curriculum=(10,)), "must increase"),
    (lambda: MetaTrainConfig(batch_size=0), "batch_size must be a positive integer"),
    (lambda: MetaTrainConfig(meta_learning_rate=-1.0), "meta_learning_rate must be > 0"),
    (lambda: MetaTrainConfig(phi_average=1.0), "phi_average must be in"),
    (lambda: MetaTrainConfig(run_mode="parallel"), "run_mode must be None or one of"),
    (lambda: Validation(score="last"), "score must be one of"),
    (lambda: Validation(horizon_multiple=0), "horizon_multiple must be a positive integer"),
    (lambda: Validation(collapse_factor=0.5), "collapse_factor must be > 1"),
    (lambda: Objective(loss="squared"), "loss must be one of"),
    (lambda: Imitation(prob=1.5, learning_rate=0.01), "prob must be in"),
    (lambda: Imitation(prob=0.5, learning_rate=0.1, max_learning_rate=0.1), "max_learning_rate"),
])
def test_bad_configuration_is_rejected_before_any_compute(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_config_round_trips_through_its_json_form():
  cfg = MetaTrainConfig(truncation=Truncation(20, 10, curriculum=(40,)),
                        objective=Objective("log_loss", Imitation(0.5, 0.01, 2.0, 0.03)),
                        validation=Validation(score="final", collapse_factor=1.5),
                        phi_average=0.9, run_mode="sequential")
  assert MetaTrainConfig.from_dict(cfg.to_dict()) == cfg


def test_phi_average_is_the_moving_average_of_an_unchanged_phi_trajectory():
  fam, config = QuadraticFamily(), LSTMConfig()
  _, _, s_plain, step_plain = prepare(fam, config, TINY)
  _, _, s_avg, step_avg = prepare(fam, config, dataclasses.replace(TINY, phi_average=0.5))
  expected = s_avg.phi_avg
  for _ in range(2):
    s_plain, _ = step_plain(fam, s_plain)
    s_avg, _ = step_avg(fam, s_avg)
    expected = jax.tree.map(lambda a, p: 0.5 * a + 0.5 * p, expected, s_plain.phi)
  assert s_plain.phi_avg is None
  jax.tree.map(np.testing.assert_array_equal, s_avg.phi, s_plain.phi)  # training is unchanged
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               s_avg.phi_avg, expected)
  assert not np.allclose(jax.tree.leaves(s_avg.phi_avg)[0], jax.tree.leaves(s_avg.phi)[0])


def test_meta_training_with_phi_average_returns_the_averaged_phi_it_scored():
  fam, config = QuadraticFamily(), LSTMConfig()
  cfg = MetaTrainConfig(truncation=Truncation(10, 5), batch_size=8, num_meta_steps=20,
                        meta_learning_rate=1e-2, validation=Validation(every=5, num_problems=8),
                        phi_average=0.8)
  result = meta_train(fam, config, cfg, progress=False)
  tasks, keys = _valid_set(fam, cfg)
  score = lambda phi: validation_score(phi, config, fam, tasks, keys, 10, cfg.validation)
  np.testing.assert_allclose(score(result.phi), result.best_valid_loss, rtol=1e-5)
  np.testing.assert_allclose(score(result.final_phi), result.history.valid_loss[-1], rtol=1e-5)


def test_final_score_averages_the_last_ten_steps_before_each_horizon_multiple():
  fam, config = QuadraticFamily(), LSTMConfig()
  phi = prepare(fam, config, TINY).state.phi
  tasks, keys = sample_tasks(fam, jax.random.key(3), 4)
  curves = np.asarray(jitted_loss_curves(learned_rule, fam, tasks, keys, 60, (phi, config))[0])
  score = lambda **kw: validation_score(phi, config, fam, tasks, keys, 30, Validation(**kw))
  np.testing.assert_allclose(score(score="final", horizon_multiple=1), curves[:, 21:31].mean(),
                             rtol=1e-5)
  ends = np.concatenate([curves[:, 21:31], curves[:, 51:61]], axis=1)
  np.testing.assert_allclose(score(score="final", horizon_multiple=2), ends.mean(), rtol=1e-5)
  np.testing.assert_allclose(score(score="mean", horizon_multiple=2), curves[:, 1:].mean(),
                             rtol=1e-5)


def test_early_stopping_keeps_the_phi_with_the_best_final_score():
  fam, config = QuadraticFamily(), LSTMConfig()
  cfg = MetaTrainConfig(truncation=Truncation(10, 5), batch_size=8, num_meta_steps=10,
                        meta_learning_rate=1e-2,
                        validation=Validation(every=5, num_problems=4, score="final",
                                              horizon_multiple=3))
  result = meta_train(fam, config, cfg, progress=False)
  tasks, keys = _valid_set(fam, cfg)
  np.testing.assert_allclose(
      validation_score(result.phi, config, fam, tasks, keys, 10, cfg.validation),
      result.best_valid_loss, rtol=1e-5)
  assert result.best_valid_loss == min(result.history.valid_loss)


def test_log_loss_objective_sums_the_logs_of_the_losses_after_each_update():
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  est, _, state, _ = prepare(fam, config, TINY)
  log_est = dataclasses.replace(est, objective=Objective("log_loss"))
  loss, (_, curves) = jax.jit(est.meta_loss)(state.phi, fam, state.runs)
  log_loss, _ = jax.jit(log_est.meta_loss)(state.phi, fam, state.runs)
  curves = np.asarray(curves)[:, 1:]
  np.testing.assert_allclose(loss, np.mean(np.sum(curves, axis=1)), rtol=1e-5)
  np.testing.assert_allclose(log_loss, np.mean(np.sum(np.log(curves), axis=1)), rtol=1e-5)


def test_truncations_chain_into_one_run_and_a_new_batch_starts_when_runs_end():
  fam, config = QuadraticFamily(dim=3), LSTMConfig((8,))
  est = TruncatedBackprop(config, unroll_length=2, batch_size=3)
  phi = prepare(fam, config, TINY).state.phi
  runs = est.start_runs(phi, fam, jax.random.key(0))
  _, runs2, _ = jax.jit(est.estimate)(phi, fam, runs, jax.random.key(1))
  np.testing.assert_array_equal(runs2.states.step, [2, 2, 2])
  _, (_, curve_a) = est.meta_loss(phi, fam, runs)
  _, (_, curve_b) = est.meta_loss(phi, fam, runs2)
  # The last loss of one truncation is the first of the next (same theta, same minibatch key).
  np.testing.assert_allclose(np.asarray(curve_a)[:, -1], np.asarray(curve_b)[:, 0], rtol=1e-6)
