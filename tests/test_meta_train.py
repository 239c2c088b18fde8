import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from metaopt.meta_train import (MetaTrainConfig, init_train_state, make_meta_step, meta_lr_factor,
                                meta_train, validation_loss)
from metaopt.networks import LSTMConfig
from metaopt.problems import QuadraticFamily
from metaopt.unroll import sample_tasks


def test_quick_meta_training_beats_its_own_initialization_on_held_out_quadratics():
  fam = QuadraticFamily()
  config = LSTMConfig()
  cfg = MetaTrainConfig(horizon=40, unroll_length=20, batch_size=32, num_meta_steps=120,
                        meta_learning_rate=3e-3, valid_every=40, num_valid_problems=32)
  result = meta_train(fam, config, cfg, progress=False)
  assert result.num_skipped == 0
  assert len(result.history["meta_loss"]) == 120
  test_tasks, test_keys = sample_tasks(fam, jax.random.key(999), 64)
  init_phi = init_train_state(fam, config, cfg).phi
  before = validation_loss(init_phi, config, fam, test_tasks, test_keys, 40)
  after = validation_loss(result.phi, config, fam, test_tasks, test_keys, 40)
  assert after < 0.5 * before, (before, after)
  assert result.best_valid_loss == min(result.history["valid_loss"])


class NaNAfterFirstStep(struct.PyTreeNode):
  """A quadratic whose loss becomes NaN once theta moves: every meta-step is non-finite."""

  def sample_task(self, key):
    return jax.random.normal(key, (3,))

  def init(self, task, key):
    return jnp.zeros(3), ()

  def loss(self, params, model_state, task, key):
    value = jnp.sum((params - task) ** 2)
    return jnp.where(jnp.any(params != 0), jnp.nan, value), model_state


def test_non_finite_meta_loss_skips_the_update_and_keeps_phi_finite():
  cfg = MetaTrainConfig(horizon=4, unroll_length=2, batch_size=4, num_meta_steps=5,
                        valid_every=5, num_valid_problems=4)
  phi0 = init_train_state(NaNAfterFirstStep(), LSTMConfig(), cfg).phi
  result = meta_train(NaNAfterFirstStep(), LSTMConfig(), cfg, progress=False)
  assert result.num_skipped == 5
  jax.tree.map(np.testing.assert_array_equal, result.final_phi, phi0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(horizon=100, unroll_length=30), "multiple of unroll_length"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(meta_learning_rate=-1.0), "meta_learning_rate must be > 0"),
    (dict(phi_average=1.0), "phi_average must be in"),
    (dict(meta_lr_schedule="linear"), "meta_lr_schedule must be"),
    (dict(valid_objective="last"), "valid_objective must be one of"),
    (dict(step_weighting="quadratic"), "step_weighting must be one of"),
])
def test_bad_configuration_is_rejected_before_any_compute(kwargs, message):
  with pytest.raises(ValueError, match=message):
    MetaTrainConfig(**kwargs)


def test_phi_average_is_the_moving_average_of_an_unchanged_phi_trajectory():
  fam, config = QuadraticFamily(), LSTMConfig()
  base = MetaTrainConfig(horizon=4, unroll_length=2, batch_size=4, num_meta_steps=3)
  plain, averaged = base, MetaTrainConfig(**{**base.__dict__, "phi_average": 0.5})
  s_plain, s_avg = init_train_state(fam, config, plain), init_train_state(fam, config, averaged)
  step_plain, step_avg = make_meta_step(config, plain), make_meta_step(config, averaged)
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
  cfg = MetaTrainConfig(horizon=10, unroll_length=5, batch_size=8, num_meta_steps=20,
                        meta_learning_rate=1e-2, valid_every=5, num_valid_problems=8,
                        phi_average=0.8)
  result = meta_train(fam, config, cfg, progress=False)
  valid_tasks, valid_keys = sample_tasks(fam, jax.random.fold_in(jax.random.key(0), 1_000_003), 8)
  rescored = validation_loss(result.phi, config, fam, valid_tasks, valid_keys, 10)
  np.testing.assert_allclose(rescored, result.best_valid_loss, rtol=1e-5)
  final = validation_loss(result.final_phi, config, fam, valid_tasks, valid_keys, 10)
  np.testing.assert_allclose(final, result.history["valid_loss"][-1], rtol=1e-5)


def test_cosine_meta_learning_rate_decays_to_zero_and_then_leaves_phi_unchanged():
  fam, config = QuadraticFamily(), LSTMConfig()
  cfg = MetaTrainConfig(horizon=4, unroll_length=2, batch_size=4, num_meta_steps=10,
                        meta_lr_schedule="cosine")
  factors = [float(meta_lr_factor(cfg, jnp.asarray(s))) for s in (0, 5, 10, 20)]
  np.testing.assert_allclose(factors, [1.0, 0.5, 0.0, 0.0], atol=1e-6)
  state = init_train_state(fam, config, cfg)
  meta_step = make_meta_step(config, cfg)
  moved, _ = meta_step(fam, state)
  assert not np.allclose(jax.tree.leaves(moved.phi)[0], jax.tree.leaves(state.phi)[0])
  ended, _ = meta_step(fam, state._replace(step=jnp.asarray(10, jnp.int32)))
  jax.tree.map(np.testing.assert_array_equal, ended.phi, state.phi)


def test_final_valid_objective_scores_the_last_ten_steps_and_drives_early_stopping():
  from metaopt.rule import rule_factory
  from metaopt.unroll import jitted_loss_curves
  fam, config = QuadraticFamily(), LSTMConfig()
  phi = init_train_state(fam, config, MetaTrainConfig()).phi
  tasks, keys = sample_tasks(fam, jax.random.key(3), 4)
  curves = np.asarray(jitted_loss_curves(rule_factory(config), fam, tasks, keys, 30, (phi,))[0])
  final = validation_loss(phi, config, fam, tasks, keys, 30, "final")
  np.testing.assert_allclose(final, curves[:, 21:].mean(), rtol=1e-5)
  np.testing.assert_allclose(validation_loss(phi, config, fam, tasks, keys, 30),
                             curves[:, 1:].mean(), rtol=1e-5)
  cfg = MetaTrainConfig(horizon=10, unroll_length=5, batch_size=8, num_meta_steps=10,
                        meta_learning_rate=1e-2, valid_every=5, num_valid_problems=4,
                        valid_objective="final")
  result = meta_train(fam, config, cfg, progress=False)
  valid_tasks, valid_keys = sample_tasks(fam, jax.random.fold_in(jax.random.key(0), 1_000_003), 4)
  np.testing.assert_allclose(validation_loss(result.phi, config, fam, valid_tasks, valid_keys, 10,
                                             "final"), result.best_valid_loss, rtol=1e-5)
  assert result.best_valid_loss == min(result.history["valid_loss"])


def test_valid_horizon_multiple_scores_the_end_of_each_horizon_of_a_longer_run():
  from metaopt.rule import rule_factory
  from metaopt.unroll import jitted_loss_curves
  fam, config = QuadraticFamily(), LSTMConfig()
  phi = init_train_state(fam, config, MetaTrainConfig()).phi
  tasks, keys = sample_tasks(fam, jax.random.key(3), 4)
  curves = np.asarray(jitted_loss_curves(rule_factory(config), fam, tasks, keys, 60, (phi,))[0])
  ends = np.concatenate([curves[:, 21:31], curves[:, 51:61]], axis=1)
  np.testing.assert_allclose(validation_loss(phi, config, fam, tasks, keys, 30, "final", 2),
                             ends.mean(), rtol=1e-5)
  np.testing.assert_allclose(validation_loss(phi, config, fam, tasks, keys, 30, "mean", 2),
                             curves[:, 1:].mean(), rtol=1e-5)
  cfg = MetaTrainConfig(horizon=10, unroll_length=5, batch_size=8, num_meta_steps=5,
                        meta_learning_rate=1e-2, valid_every=5, num_valid_problems=4,
                        valid_objective="final", valid_horizon_multiple=3)
  result = meta_train(fam, config, cfg, progress=False)
  valid_tasks, valid_keys = sample_tasks(fam, jax.random.fold_in(jax.random.key(0), 1_000_003), 4)
  np.testing.assert_allclose(validation_loss(result.phi, config, fam, valid_tasks, valid_keys, 10,
                                             "final", 3), result.best_valid_loss, rtol=1e-5)
  with pytest.raises(ValueError, match="valid_horizon_multiple must be a positive integer"):
    MetaTrainConfig(valid_horizon_multiple=0)


def test_linear_step_weighting_weights_each_loss_by_its_step_in_the_run():
  from metaopt.meta_train import truncated_meta_loss
  fam, config = QuadraticFamily(dim=3), LSTMConfig()
  cfg = MetaTrainConfig(horizon=6, unroll_length=3, batch_size=4, num_valid_problems=2)
  state = init_train_state(fam, config, cfg)
  meta_loss = jax.jit(truncated_meta_loss, static_argnums=(1, 5, 6, 7, 8, 9, 10))
  args = (state.phi, config, fam, state.tasks)
  first, (runs, losses) = meta_loss(*args, state.runs, 3, False, False, "loss", "linear", 6)
  # Second unroll of the run: steps 4..6, weights 2t / 7 (not restarted at 1).
  second, (_, later) = meta_loss(*args, runs, 3, False, False, "loss", "linear", 6)
  uniform, _ = meta_loss(*args, runs, 3, False, False, "loss", "uniform", 6)
  for total, curve, steps in ((first, losses, [1, 2, 3]), (second, later, [4, 5, 6])):
    weights = 2.0 * np.array(steps) / 7.0
    np.testing.assert_allclose(total, np.mean(np.sum(weights * np.asarray(curve)[:, 1:], axis=1)),
                               rtol=1e-5)
  np.testing.assert_allclose(uniform, np.mean(np.sum(np.asarray(later)[:, 1:], axis=1)), rtol=1e-5)
