"""The truncation schedule: how long meta-training runs are and where they are cut.

A run of ``horizon`` optimizee steps is cut into unrolls of ``unroll_length``
steps; each unroll is one meta-step. With a curriculum (Chen et al. 2020,
"Training stronger baselines for learning to optimize") the horizon grows in
stages, each stage starting once validation stops improving.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Truncation:
  """Run lengths and truncation of meta-training (defaults: the paper's).

  Attributes:
    horizon: optimizee steps per run in the first stage (paper: 100).
    unroll_length: optimizee steps per truncation, i.e. per meta-step (paper: 20).
    curriculum: longer horizons to move on to after ``horizon``, e.g. (200, 500, 1000);
      unrolls stay ``unroll_length`` long. Validation runs the current stage's horizon.
    patience: validations without improvement before the next stage starts (from the
      stage's best phi, with a fresh meta-optimizer state).

  Example:
    >>> Truncation(horizon=100, unroll_length=20, curriculum=(200, 500)).horizons()
    (100, 200, 500)
  """

  horizon: int = 100
  unroll_length: int = 20
  curriculum: tuple[int, ...] = ()
  patience: int = 1

  def __post_init__(self):
    object.__setattr__(self, "curriculum", tuple(int(h) for h in self.curriculum))
    for name in ("horizon", "unroll_length", "patience"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"Truncation.{name} must be a positive integer, got "
                         f"{getattr(self, name)!r}")
    horizons = self.horizons()
    if any(b <= a for a, b in zip(horizons, horizons[1:])) or any(
        h % self.unroll_length for h in horizons):
      raise ValueError(f"Truncation: the horizon and curriculum must increase and be multiples "
                       f"of unroll_length ({self.unroll_length}), got horizons {horizons}")

  def horizons(self) -> tuple[int, ...]:
    """The horizon of each stage (``(horizon,)`` without a curriculum)."""
    return (int(self.horizon),) + self.curriculum

  def unrolls_per_run(self, stage: int) -> int:
    """Meta-steps a run of stage ``stage`` lasts."""
    return self.horizons()[stage] // self.unroll_length

  def next_stage(self, stage: int, stalls: int) -> int:
    """The stage after ``stalls`` validations without improvement in ``stage``.

    Example:
      >>> Truncation(curriculum=(200,)).next_stage(0, stalls=1)
      1
    """
    if stalls >= self.patience and stage + 1 < len(self.horizons()):
      return stage + 1
    return stage
