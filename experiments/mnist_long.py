"""The MNIST experiment with a longer meta-training: 3000 meta-steps instead of 1800.

Same problems, paper settings, seed and evaluation as ``make mnist``
(:mod:`experiments.mnist`); early stopping scores 200-step validation runs at
steps 100 and 200 (``valid_horizon_multiple=2``). About 45 minutes of
meta-training on 2 CPU cores. Run: ``make mnist-long`` (``QUICK=1``: the quick
``make mnist``). Writes ``results/mnist_long/``.
"""

from __future__ import annotations

import dataclasses

from experiments import mnist
from metaopt import experiment
from metaopt.experiment import ExperimentConfig


def config(quick: bool = False, data_dir: str | None = None) -> ExperimentConfig:
  """:func:`experiments.mnist.config` with 3000 meta-steps and 200-step validation runs."""
  cfg = mnist.config(quick, data_dir)
  train = dataclasses.replace(cfg.train, num_meta_steps=cfg.train.num_meta_steps if quick else 3000,
                              valid_horizon_multiple=2)
  return dataclasses.replace(cfg, name="mnist_long", train=train)


def main(argv=None) -> dict:
  return experiment.main("mnist_long", config, argv, __doc__, data=True)


if __name__ == "__main__":
  main()
