"""The MNIST experiment with a longer, slower meta-training: 3000 meta-steps at meta-lr 3e-3.

Same problems, paper settings, seed and evaluation as ``make mnist``
(:mod:`experiments.mnist`), with the meta-training that ``make mnist`` used
before it moved to meta-lr 6e-3 and 2000 meta-steps: meta-Adam 3e-3 for 3000
meta-steps, validation every 50; early stopping scores 200-step validation runs
at steps 100 and 200 (``Validation.horizon_multiple=2``). Run: ``make mnist-long``
(``QUICK=1``: the quick ``make mnist``). Writes ``results/mnist_long/``.
"""

from __future__ import annotations

import dataclasses

from experiments import mnist
from metaopt import command_line
from metaopt.experiment import ExperimentConfig


def config(quick: bool = False, data_dir: str | None = None) -> ExperimentConfig:
  """:func:`experiments.mnist.config` with 3000 meta-steps at meta-lr 3e-3, validated every 50."""
  cfg = mnist.config(quick, data_dir)
  train = cfg.train if quick else dataclasses.replace(
      cfg.train, num_meta_steps=3000, meta_learning_rate=3e-3,
      validation=dataclasses.replace(cfg.train.validation, every=50))
  return dataclasses.replace(cfg, name="mnist_long", train=train)


def main(argv=None) -> dict:
  return command_line.main("mnist_long", config, argv, __doc__, data=True)


if __name__ == "__main__":
  main()
