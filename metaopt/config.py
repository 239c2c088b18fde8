"""Meta-training configuration, composed of small named parts.

:class:`MetaTrainConfig` holds the truncation schedule
(:class:`metaopt.truncation.Truncation`), the meta-objective
(:class:`metaopt.objectives.Objective`), validation and early stopping
(:class:`metaopt.validation.Validation`) and the few settings of the meta-step
itself. Every part validates itself when built, before any compute.
"""

from __future__ import annotations

import dataclasses
import json

import optax

from metaopt.objectives import Imitation, Objective
from metaopt.truncation import Truncation
from metaopt.unroll import RUN_MODES
from metaopt.validation import Validation


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
  """What meta-training does (defaults: the paper's).

  Attributes:
    truncation: run horizon, unroll length and curriculum.
    objective: what each run's unroll contributes to the meta-loss.
    validation: how phi is validated and the best one kept.
    batch_size: runs (problems) per meta-step.
    num_meta_steps: total meta-steps (each is one truncation + one phi update).
    meta_learning_rate: learning rate of the default meta-optimizer
      (:meth:`meta_optimizer`: global-norm clipping, then Adam).
    clip_norm: the default meta-optimizer clips meta-gradients to this global norm.
    phi_average: if set, the decay ``d`` of an exponential moving average of phi
      (Polyak averaging, ``optax.incremental_update``) after every meta-step;
      validation, early stopping and the result then use the average.
    remat: rematerialize the unroll in the backward pass (memory grows ~ sqrt(unroll)).
    run_mode: how the runs of a meta-step are mapped (:func:`metaopt.unroll.map_runs`):
      None uses the family's; ``"sequential"`` suits a few large runs on a CPU.
    seed: seeds phi's initialization, the meta-training problems and the validation set.

  Example:
    >>> MetaTrainConfig(truncation=Truncation(horizon=100, unroll_length=20),
    ...                 batch_size=128, num_meta_steps=1250, meta_learning_rate=3e-3)
  """

  truncation: Truncation = Truncation()
  objective: Objective = Objective()
  validation: Validation = Validation()
  batch_size: int = 128
  num_meta_steps: int = 2000
  meta_learning_rate: float = 1e-3
  clip_norm: float = 10.0
  phi_average: float | None = None
  remat: bool = False
  run_mode: str | None = None
  seed: int = 0

  def __post_init__(self):
    for name in ("batch_size", "num_meta_steps"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"MetaTrainConfig.{name} must be a positive integer, got "
                         f"{getattr(self, name)!r}")
    for name in ("meta_learning_rate", "clip_norm"):
      if not float(getattr(self, name)) > 0:
        raise ValueError(f"MetaTrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
    if self.phi_average is not None and not 0 <= self.phi_average < 1:
      raise ValueError(f"MetaTrainConfig.phi_average must be in [0, 1) or None, got "
                       f"{self.phi_average!r}")
    if self.run_mode is not None and self.run_mode not in RUN_MODES:
      raise ValueError(f"MetaTrainConfig.run_mode must be None or one of {RUN_MODES}, got "
                       f"{self.run_mode!r}")

  def meta_optimizer(self) -> optax.GradientTransformation:
    """The default meta-optimizer: ``clip_by_global_norm(clip_norm)`` then Adam."""
    return optax.chain(optax.clip_by_global_norm(self.clip_norm),
                       optax.adam(self.meta_learning_rate))

  def to_dict(self) -> dict:
    """Plain-JSON form (nested parts as dicts), as recorded in results and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_dict(cls, d: dict) -> MetaTrainConfig:
    """Inverse of :meth:`to_dict`.

    Example:
      >>> MetaTrainConfig.from_dict(MetaTrainConfig().to_dict()) == MetaTrainConfig()
      True
    """
    d = dict(d)
    objective = dict(d.pop("objective", {}))
    imitation = objective.pop("imitation", None)
    return cls(truncation=Truncation(**d.pop("truncation", {})),
               objective=Objective(**objective,
                                   imitation=None if imitation is None else Imitation(**imitation)),
               validation=Validation(**d.pop("validation", {})), **d)
