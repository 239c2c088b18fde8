"""The paper's section 3.1: 10-dimensional random quadratics (its Figure 2, left).

Run: ``make quadratic`` (full) or ``QUICK=1 make quadratic`` / ``--quick`` (seconds).
"""

from __future__ import annotations

from metaopt import command_line
from metaopt.config import MetaTrainConfig
from metaopt.experiment import ExperimentConfig
from metaopt.networks import LSTMConfig
from metaopt.problems import QuadraticFamily
from metaopt.truncation import Truncation
from metaopt.validation import Validation


def config(quick: bool = False) -> ExperimentConfig:
  """The paper's settings; ``quick`` shrinks meta-training and the problem sets."""
  lstm = LSTMConfig(hidden_sizes=(20, 20), preprocessing="none", output_scale=1.0)
  train = MetaTrainConfig(
      truncation=Truncation(horizon=100, unroll_length=20),   # the paper's runs and truncation
      batch_size=128,                          # problems per meta-step
      num_meta_steps=60 if quick else 1250,
      meta_learning_rate=3e-3,                 # searched over {1e-3, 3e-3, 1e-2}: docs/results.md
      validation=Validation(every=20 if quick else 100, num_problems=32 if quick else 128),
  )
  return ExperimentConfig(
      name="quadratic", family=QuadraticFamily(dim=10), lstm=lstm, train=train,
      eval_steps=100,
      num_test_problems=32 if quick else 256,
      num_tune_problems=32 if quick else 128,
  )


def main(argv=None) -> dict:
  return command_line.main("quadratic", config, argv, __doc__)


if __name__ == "__main__":
  main()
