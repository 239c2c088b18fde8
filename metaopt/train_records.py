"""What meta-training records and returns: its history, its counters, its result."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple


@dataclasses.dataclass
class History:
  """Per-meta-step and per-validation records (lists of Python numbers)."""

  meta_loss: list[float] = dataclasses.field(default_factory=list)
  valid_step: list[int] = dataclasses.field(default_factory=list)
  valid_loss: list[float] = dataclasses.field(default_factory=list)
  valid_horizon: list[int] = dataclasses.field(default_factory=list)
  restored_at: list[int] = dataclasses.field(default_factory=list)   # collapse guard
  stage_start: list[int] = dataclasses.field(default_factory=list)   # curriculum


@dataclasses.dataclass
class Progress:
  """The host loop's counters; saved with every checkpoint."""

  step: int = 0
  unrolls_done: int = 0
  stage: int = 0
  stalls: int = 0
  best_valid: float | None = None
  num_skipped: int = 0
  consecutive_nonfinite: int = 0
  seconds: float = 0.0
  history: History = dataclasses.field(default_factory=History)

  @classmethod
  def from_dict(cls, d: dict) -> Progress:
    return cls(**{**d, "history": History(**d["history"])})


class MetaTrainResult(NamedTuple):
  """Outcome of :func:`meta_train`.

  Attributes:
    phi: the best phi by validation score (early stopping).
    best_valid_loss: its validation score.
    final_phi: phi after the last meta-step (its moving average with ``phi_average``).
    history: the :class:`History` of meta-losses and validations.
    num_skipped: meta-steps skipped for a non-finite meta-loss or meta-gradient.
    seconds: wall time, compilation included (resumed runs add the interrupted ones').
  """

  phi: Any
  best_valid_loss: float
  final_phi: Any
  history: History
  num_skipped: int
  seconds: float


class MetaTrainingStopped(RuntimeError):
  """Meta-training stopped early; ``result`` holds the best phi found so far."""

  def __init__(self, message: str, result: MetaTrainResult):
    super().__init__(message)
    self.result = result
