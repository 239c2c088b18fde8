"""Persistent Evolution Strategies: unbiased for the whole run where truncated backprop is not."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metaopt import MetaTrainConfig, Truncation, Validation, meta_train
from metaopt.estimators import TruncatedBackprop
from metaopt.networks import LSTMConfig, init_meta_params
from metaopt.pes import PES
from metaopt.problems import QuadraticFamily
from metaopt.rule import learned_rule
from metaopt.unroll import init_unroll, unroll

FAMILY = QuadraticFamily(dim=2, init_scale=1.0)
# Large initial output weights: the rule's steps, and so its state's effect on later
# truncations, matter from the start.
CONFIG = LSTMConfig((4,), output_scale=0.1, output_init_scale=1.0)
HORIZON, UNROLL, PAIRS, REPEATS = 12, 3, 64, 24


@jax.jit
def _whole_run_gradient(phi, tasks, keys):
  """The exact gradient of the mean over runs of sum_{t=1..T} f(theta_t), through everything."""
  def total(phi):
    def one(task, key):
      rule = learned_rule(phi, CONFIG, flatten_coordinates=True)
      state = init_unroll(rule, FAMILY, task, key)
      return jnp.sum(unroll(rule, FAMILY, task, state, HORIZON, second_order=True)[1][1:])
    return jnp.mean(jax.vmap(one)(tasks, keys))
  return jax.grad(total)(phi)


def _sum_over_truncations(estimator, phi, key):
  """The estimator's meta-gradients summed over the truncations of one batch of whole runs."""
  k_start, k_steps = jax.random.split(key)
  runs = estimator.start_runs(phi, FAMILY, k_start)
  total = jax.tree.map(jnp.zeros_like, phi)
  for i in range(HORIZON // UNROLL):
    grads, runs, _ = estimator.estimate(phi, FAMILY, runs, jax.random.fold_in(k_steps, i))
    total = jax.tree.map(jnp.add, total, grads)
  return total, runs


@pytest.fixture(scope="module")
def gradients():
  phi = init_meta_params(CONFIG, jax.random.key(0))
  pes = PES(CONFIG, unroll_length=UNROLL, num_pairs=PAIRS, sigma=1e-3)
  pes_sum = jax.jit(lambda key: _sum_over_truncations(pes, phi, key))
  estimates, tasks = [], None
  for r in range(REPEATS):
    total, runs = pes_sum(jax.random.key(100 + r))
    estimates.append(ravel_pytree(total)[0])
    # The exact gradient of the very runs PES ran (their tasks and theta_0 keys).
    k_start = jax.random.split(jax.random.key(100 + r))[0]
    tasks = runs.tasks
    run_keys = jax.random.split(jax.random.split(k_start)[1], PAIRS)
    exact = ravel_pytree(_whole_run_gradient(phi, tasks, run_keys))[0]
    estimates[-1] = (estimates[-1], exact)
  tbptt = TruncatedBackprop(CONFIG, unroll_length=UNROLL, batch_size=PAIRS)
  truncated = ravel_pytree(
      jax.jit(lambda key: _sum_over_truncations(tbptt, phi, key)[0])(jax.random.key(100)))[0]
  return estimates, truncated


def test_pes_agrees_with_the_whole_run_gradient_within_its_standard_error(gradients):
  estimates, _ = gradients
  errors = np.stack([np.asarray(g - exact) for g, exact in estimates])
  exact = np.mean([np.asarray(e) for _, e in estimates], axis=0)
  directions = [exact / np.linalg.norm(exact)]
  rng = np.random.default_rng(0)
  directions += [d / np.linalg.norm(d) for d in rng.normal(size=(2, exact.size))]
  for u in directions:
    projected = errors @ u
    sem = projected.std(ddof=1) / np.sqrt(len(projected))
    assert abs(projected.mean()) < 3 * sem, (projected.mean(), sem)
  # ... and the estimate is informative: its mean points along the exact gradient.
  mean = np.mean([np.asarray(g) for g, _ in estimates], axis=0)
  assert mean @ directions[0] > 0.5 * np.linalg.norm(exact)


def test_truncated_backprop_is_biased_on_the_same_runs(gradients):
  estimates, truncated = gradients
  g0, exact0 = estimates[0]  # the runs of key 100, which truncated backprop ran too
  errors = np.stack([np.asarray(g - exact) for g, exact in estimates])
  u = np.asarray(exact0) / np.linalg.norm(exact0)
  sem = (errors @ u).std(ddof=1) / np.sqrt(len(errors))
  assert abs((np.asarray(truncated) - np.asarray(exact0)) @ u) > 5 * sem


def test_antithetic_pairs_start_alike_and_perturbations_accumulate_until_runs_restart():
  phi = init_meta_params(CONFIG, jax.random.key(0))
  pes = PES(CONFIG, unroll_length=UNROLL, num_pairs=3, sigma=0.1)
  runs = pes.start_runs(phi, FAMILY, jax.random.key(1))
  params = np.asarray(runs.states.params)
  np.testing.assert_array_equal(params[:3], params[3:])
  _, runs1, _ = pes.estimate(phi, FAMILY, runs, jax.random.key(2))
  _, runs2, _ = pes.estimate(phi, FAMILY, runs1, jax.random.key(3))
  expected = jax.tree.map(jnp.add, pes.perturbation(phi, jax.random.key(2)),
                          pes.perturbation(phi, jax.random.key(3)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), runs2.xi, expected)
  assert not np.allclose(np.asarray(runs2.states.params)[:3], np.asarray(runs2.states.params)[3:])
  with pytest.raises(ValueError, match="sigma must be > 0"):
    dataclasses.replace(pes, sigma=0.0)


def test_meta_training_with_pes_lowers_the_validation_loss():
  cfg = MetaTrainConfig(truncation=Truncation(horizon=20, unroll_length=5), batch_size=8,
                        num_meta_steps=60, meta_learning_rate=1e-2,
                        validation=Validation(every=30, num_problems=16))
  pes = PES(LSTMConfig((8,)), unroll_length=5, num_pairs=16, sigma=0.01)
  result = meta_train(QuadraticFamily(dim=3), LSTMConfig((8,)), cfg, estimator=pes,
                      progress=False)
  assert result.num_skipped == 0
  assert result.best_valid_loss < 0.7 * result.history.valid_loss[0]
