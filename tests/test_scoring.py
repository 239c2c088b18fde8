"""Scores across tasks: ties within two standard errors, interquartile means, divergence."""

import numpy as np

from metaopt.scoring import bootstrap_iqm, compare, diverged, iqm


def test_a_difference_within_two_standard_errors_is_a_tie():
  assert compare(1.0, 0.1, 1.25, 0.1) == "tie"       # 0.25 < 2 * 0.141
  assert compare(1.0, 0.1, 1.3, 0.1) == "win"
  assert compare(1.3, 0.1, 1.0, 0.1) == "loss"
  assert compare(float("inf"), 0.0, 5.0, 1.0) == "loss"
  assert compare(5.0, 1.0, float("nan"), 0.0) == "win"


def test_iqm_ignores_the_outer_quarters_and_its_interval_covers_it():
  x = np.array([-100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1e9])
  assert iqm(x) == 3.5
  rng = np.random.default_rng(0)
  tasks = [rng.normal(1.0, 0.1, 16), rng.normal(0.5, 0.1, 16), rng.normal(2.0, 0.1, 16)]
  point, low, high = bootstrap_iqm(tasks, num_samples=500)
  assert low <= point <= high and high - low < 0.5
  assert bootstrap_iqm(tasks, num_samples=500) == (point, low, high)   # seeded


def test_divergence_is_a_non_finite_curve_or_a_smoothed_rise_after_the_horizon():
  falling = list(np.linspace(10.0, 1.0, 41))
  assert not diverged(falling, horizon=20)
  assert diverged(falling[:30] + [None] + falling[31:], horizon=20)
  rising = falling[:21] + list(np.linspace(5.5, 9.0, 20))
  assert diverged(rising, horizon=20)
  noisy = [v * (1.0 + 0.001 * (-1) ** i) for i, v in enumerate(falling)]
  assert not diverged(noisy, horizon=20)      # a bump smaller than the tolerance
  assert not diverged(falling[:21], horizon=20)  # nothing after the horizon
