"""Joint problems of several task types with losses normalized by their initial value."""

import jax
import numpy as np
import optax

from metaopt import MetaTrainConfig, Objective, Truncation, Validation, meta_train
from metaopt.networks import LSTMConfig
from metaopt.problems import QuadraticFamily
from metaopt.problems.joint import JointFamily, NormalizedFamily
from metaopt.unroll import jitted_loss_curves, sample_tasks


def _joint():
  return JointFamily((NormalizedFamily(QuadraticFamily(dim=3, init_scale=1.0)),
                      NormalizedFamily(QuadraticFamily(dim=5, init_scale=10.0))))


def test_every_part_starts_at_one_and_the_joint_loss_is_their_mean():
  fam = _joint()
  tasks, keys = sample_tasks(fam, jax.random.key(0), 4)
  curves, (params, _) = jitted_loss_curves(optax.adam, fam, tasks, keys, 20, (0.1,))
  np.testing.assert_allclose(np.asarray(curves)[:, 0], 1.0, rtol=1e-6)
  assert np.all(np.asarray(curves)[:, -1] < 0.5)
  assert [p.shape[-1] for p in params] == [3, 5]
  # Each part is the base family's problem: normalized losses are the base losses / f(theta_0).
  part = fam.families[1]
  task = jax.tree.map(lambda x: x[0], tasks[1])
  theta, state = part.init(task, jax.random.fold_in(jax.random.split(keys[0])[0], 1))
  raw, _ = part.base.loss(theta, state.base, task, keys[0])
  np.testing.assert_allclose(state.initial_loss, raw, rtol=1e-6)


def test_a_rule_meta_trained_on_the_joint_problem_improves_on_it():
  cfg = MetaTrainConfig(truncation=Truncation(horizon=20, unroll_length=10), batch_size=8,
                        num_meta_steps=40, meta_learning_rate=1e-2,
                        objective=Objective(loss="log_loss"),
                        validation=Validation(every=20, num_problems=8))
  result = meta_train(_joint(), LSTMConfig((8,), preprocessing="rnnprop",
                                           output_activation="tanh", output_scale=0.1),
                      cfg, progress=False)
  assert result.best_valid_loss < 0.8 * result.history.valid_loss[0]
