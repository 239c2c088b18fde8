"""Scores across many tasks: win / tie / loss, interquartile means with bootstrap intervals.

Used by the task-suite benchmark (``make suite``) to compare a learned rule with
tuned baselines on tasks whose losses live on different scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metaopt.evaluate import late_rise


def compare(mean: float, sem: float, other_mean: float, other_sem: float) -> str:
  """``"win"``, ``"tie"`` or ``"loss"`` of a lower-is-better mean against another.

  A tie is a difference within 2 standard errors of the difference,
  :math:`|a - b| \\le 2 \\sqrt{s_a^2 + s_b^2}`; a non-finite mean loses to a finite one.

  Example:
    >>> compare(1.0, 0.1, 2.0, 0.1)
    'win'
  """
  finite, other_finite = np.isfinite(mean), np.isfinite(other_mean)
  if not (finite and other_finite):
    return "tie" if finite == other_finite else ("win" if finite else "loss")
  if abs(mean - other_mean) <= 2.0 * np.hypot(sem, other_sem):
    return "tie"
  return "win" if mean < other_mean else "loss"


def iqm(values: np.ndarray) -> float:
  """Interquartile mean: the mean of the middle 50% of ``values`` (sorted; inf counts as large).

  Example:
    >>> iqm(np.array([0.0, 1.0, 2.0, 100.0]))
    1.5
  """
  x = np.sort(np.asarray(values, np.float64).ravel())
  n = len(x)
  lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
  return float(np.mean(x[lo:max(hi, lo + 1)]))


def bootstrap_iqm(per_task: Sequence[np.ndarray], num_samples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
  """IQM over all runs of all tasks and its stratified-bootstrap confidence interval.

  Runs are resampled with replacement within each task (Agarwal et al. 2021,
  "Deep reinforcement learning at the edge of the statistical precipice").

  Args:
    per_task: one array of per-run scores per task (e.g. normalized final losses).
    num_samples: bootstrap resamples.
    seed: seeds the resampling.
    level: the interval's coverage.

  Returns:
    ``(iqm, low, high)``.

  Example:
    >>> bootstrap_iqm([np.array([0.9, 1.1]), np.array([0.5, 0.7, 0.6])])
  """
  rng = np.random.default_rng(seed)
  tasks = [np.asarray(t, np.float64).ravel() for t in per_task]
  point = iqm(np.concatenate(tasks))
  stats = np.empty(num_samples)
  for i in range(num_samples):
    stats[i] = iqm(np.concatenate([t[rng.integers(0, len(t), len(t))] for t in tasks]))
  alpha = (1.0 - level) / 2.0
  return point, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def diverged(curve: Sequence[float | None], horizon: int, window: int = 10,
             tolerance: float = 0.01) -> bool:
  """Whether a mean loss curve diverges: non-finite, or a late rise past ``horizon``.

  A late rise is a moving average (``window`` steps) that climbs more than
  ``tolerance`` (relative) above its value at ``horizon``, the meta-training horizon
  (:func:`metaopt.evaluate.late_rise`); curves no longer than ``horizon`` are only
  checked for non-finite values.

  Example:
    >>> diverged([3.0, 2.0, 1.0, 1.0, 5.0], horizon=2, window=1)
    True
  """
  x = np.array([np.nan if v is None else v for v in curve], np.float64)
  if not np.all(np.isfinite(x)):
    return True
  if len(x) - 1 <= horizon:
    return False
  at, highest, _ = late_rise(x, horizon, min(window, horizon + 1))
  return highest > at * (1.0 + tolerance)
