import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from metaopt.meta_train import MetaTrainConfig, init_train_state, meta_train, validation_loss
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
])
def test_bad_configuration_is_rejected_before_any_compute(kwargs, message):
  with pytest.raises(ValueError, match=message):
    MetaTrainConfig(**kwargs)
