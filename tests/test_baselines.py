import jax
import numpy as np
import optax
import pytest

from metaopt.baselines import BASELINES, tune_baselines, tune_learning_rate
from metaopt.unroll import sample_tasks


def test_grid_search_picks_the_known_best_rate(scalar_family):
  # f(x) = x^2 from x0 = 1: SGD gives x_T = (1 - 2a)^T x0, so a = 0.5 is optimal.
  tasks, keys = sample_tasks(scalar_family, jax.random.key(0), 2)
  best, table = tune_learning_rate(optax.sgd, scalar_family, tasks, keys, 3,
                                   grid=(0.05, 0.158, 0.5, 1.58))
  assert best == pytest.approx(0.5)
  assert table[0.5] == pytest.approx(0.0, abs=1e-12)
  assert table[1.58] > table[0.158]


def test_grid_is_extended_when_the_best_rate_is_at_an_edge(scalar_family):
  tasks, keys = sample_tasks(scalar_family, jax.random.key(0), 2)
  best, table = tune_learning_rate(optax.sgd, scalar_family, tasks, keys, 3,
                                   grid=(0.01, 0.02, 0.04))
  rates = sorted(table)
  # 0.64 gives |1 - 1.28|^6 < |1 - 0.64|^6, and 1.28 diverges: 0.64 is interior.
  assert best == pytest.approx(0.64)
  assert rates[-1] == pytest.approx(1.28) and rates.index(best) == len(rates) - 2


def test_diverging_rates_count_as_infinite_and_bad_grids_are_rejected(scalar_family):
  tasks, keys = sample_tasks(scalar_family, jax.random.key(0), 2)
  _, table = tune_learning_rate(optax.sgd, scalar_family, tasks, keys, 200,
                                grid=(0.1, 0.3, 1e3))
  assert table[1e3] == np.inf
  with pytest.raises(ValueError, match="at least 3 positive"):
    tune_learning_rate(optax.sgd, scalar_family, tasks, keys, 3, grid=(0.1, 0.2))
  with pytest.raises(ValueError, match="at least 3 positive"):
    tune_learning_rate(optax.sgd, scalar_family, tasks, keys, 3, grid=(-1.0, 0.1, 0.2))
  with pytest.raises(ValueError, match="unknown baseline"):
    tune_baselines(scalar_family, tasks, keys, 3, names=("adamw",))


def test_the_four_baselines_are_the_papers():
  assert sorted(BASELINES) == ["adam", "nag", "rmsprop", "sgd"]
