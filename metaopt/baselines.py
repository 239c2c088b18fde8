"""Hand-designed baselines (SGD, RMSprop, Adam, NAG) and their learning-rate search.

They run through exactly the same unroll as the learned rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt.problems.base import ProblemFamily, Task
from metaopt.unroll import jitted_loss_curves


def nag(learning_rate) -> optax.GradientTransformation:
  """Nesterov accelerated gradient with momentum 0.9."""
  return optax.sgd(learning_rate, momentum=0.9, nesterov=True)


# Each maps a learning rate to an optax transform; other hyper-parameters at optax defaults.
BASELINES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
    "adam": optax.adam,
    "nag": nag,
}

DEFAULT_GRID: tuple[float, ...] = tuple(float(x) for x in np.logspace(-4, 0, 9))


def _final_loss_by_rate(make_optimizer, family, tasks, keys, num_steps, rates,
                        args=()) -> np.ndarray:
  final = []
  for lr in rates:
    curves = jitted_loss_curves(make_optimizer, family, tasks, keys, num_steps,
                                (*args, jnp.float32(lr)))[0]
    final.append(float(jnp.mean(curves[:, -1])))
  final = np.asarray(final)
  return np.where(np.isfinite(final), final, np.inf)


def tune_learning_rate(make_optimizer: Callable[..., optax.GradientTransformation],
                       family: ProblemFamily, tasks: Task, keys: jax.Array, num_steps: int,
                       grid: Sequence[float] = DEFAULT_GRID, max_extensions: int = 6,
                       args: tuple = ()) -> tuple[float, dict[float, float]]:
  """Pick the learning rate with the lowest mean final loss on validation problems.

  The grid is log-spaced; if the best rate sits at an edge, the grid is
  extended by its own ratio past that edge (at most ``max_extensions`` times), so
  the chosen rate is interior whenever the optimum is reachable.

  Args:
    make_optimizer: maps a learning rate to an optax transform (e.g. ``optax.adam``).
    family: the problem family.
    tasks: validation tasks (leading axis n); keys: their n run keys.
    num_steps: the horizon whose final loss is minimized.
    grid: increasing positive learning rates, at least 3, log-spaced.
    max_extensions: how many times the grid may grow past an edge.
    args: leading (traced) arguments of ``make_optimizer`` before the rate, e.g. a learned
      rule's ``(phi, config)`` to tune its ``learning_rate_multiplier``.

  Returns:
    ``(best_rate, {rate: mean final loss})`` (diverged runs count as inf).

  Example:
    >>> lr, table = tune_learning_rate(optax.sgd, fam, tasks, keys, 100)
  """
  rates = sorted(float(r) for r in grid)
  if len(rates) < 3 or rates[0] <= 0:
    raise ValueError(f"learning-rate grid must hold at least 3 positive rates, got {list(grid)}")
  table = dict(zip(rates, _final_loss_by_rate(make_optimizer, family, tasks, keys,
                                              num_steps, rates, args)))
  for _ in range(max_extensions):
    ordered = sorted(table)
    best = min(ordered, key=lambda r: table[r])
    if best == ordered[0]:
      new = ordered[0] * ordered[0] / ordered[1]
    elif best == ordered[-1]:
      new = ordered[-1] * ordered[-1] / ordered[-2]
    else:
      break
    table[new] = float(_final_loss_by_rate(make_optimizer, family, tasks, keys,
                                           num_steps, [new], args)[0])
  best = min(table, key=lambda r: table[r])
  return best, dict(sorted(table.items()))


def tune_baselines(family: ProblemFamily, tasks: Task, keys: jax.Array, num_steps: int,
                   names: Sequence[str] = tuple(BASELINES),
                   grid: Sequence[float] | Mapping[str, Sequence[float]] = DEFAULT_GRID
                   ) -> dict[str, dict]:
  """Tune each named baseline's learning rate (see :func:`tune_learning_rate`).

  ``grid``: one initial grid for all, or ``{name: grid}``.

  Returns:
    ``{name: {"learning_rate": best, "grid": {rate: final loss}}}``.
  """
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise ValueError(f"unknown baseline(s) {unknown}; expected names from {list(BASELINES)}")
  out = {}
  for name in names:
    start = grid[name] if isinstance(grid, Mapping) else grid
    best, table = tune_learning_rate(BASELINES[name], family, tasks, keys, num_steps, start)
    out[name] = {"learning_rate": best, "grid": table}
  return out
