"""Ablation of the generalizing rule: each option removed in turn, same (reduced) budget.

Rules (all meta-trained on the MNIST base net, evaluated on the six tasks of
``experiments/generalize.py`` against Adam tuned per task):
``lstm_general`` (all options), ``lstm_no_rnnprop`` (the paper's log/sign
inputs and linear output instead), ``lstm_no_augment`` (no random scaling or
convex term), ``lstm_no_curriculum`` (100-step runs only), ``lstm_no_log``
(the paper's sum of losses as meta-objective) and ``lstm_imitation`` (all options
plus imitation of Adam, which ``lstm_general`` does not use). Run: ``make
generalize-ablation``; one row only: ``RULES=lstm_imitation make generalize-ablation``.
"""

from __future__ import annotations

import dataclasses

from experiments import generalize
from metaopt import command_line
from metaopt.data import load_dataset
from metaopt.experiment import ExperimentConfig, ExtraRule
from metaopt.objectives import Imitation, Objective
from metaopt.problems.classification import classification_metrics
from metaopt.problems.mlp import MLPFamily

NUM_META_STEPS = 250   # per rule (the full experiment uses 1000)
# Imitation (Chen et al. 2020): half of the runs follow Adam at the rate tuned for the 1000-step
# task (results/generalize), scored by the rule's relative distance to Adam's updates.
IMITATION = Imitation(prob=0.5, learning_rate=0.01)


def config(quick: bool = False, data_dir: str | None = None) -> ExperimentConfig:
  """All options, each option removed in turn, and imitation added; fewer meta-steps and runs."""
  mnist = load_dataset("mnist", data_dir)
  base = MLPFamily.from_dataset(mnist, init_scale=0.01, batch_size=128)
  full = generalize.train_config(quick)
  # The ablation's base rule has neither imitation nor phi averaging: it measures the
  # other options alone (docs/results.md, generalization).
  train = dataclasses.replace(
      full, num_meta_steps=8 if quick else NUM_META_STEPS,
      validation=dataclasses.replace(full.validation, num_problems=2 if quick else 4),
      objective=Objective(loss="log_loss"), phi_average=None)
  paper_net = generalize.PAPER_LSTM
  ablations = {
      "lstm_no_rnnprop": dict(lstm=paper_net),
      "lstm_no_augment": dict(family=base),
      "lstm_no_curriculum": dict(train=dataclasses.replace(
          train, truncation=dataclasses.replace(train.truncation, curriculum=()))),
      "lstm_no_log": dict(train=dataclasses.replace(train, objective=Objective(loss="loss"))),
      "lstm_imitation": dict(train=dataclasses.replace(
          train, objective=Objective(loss="log_loss", imitation=IMITATION))),
  }
  extra = tuple(ExtraRule(**{"name": name, "family": generalize.augment(base),
                             "lstm": generalize.GENERAL_LSTM, "train": train,
                             "valid_family": base, **change})
                for name, change in ablations.items())
  return ExperimentConfig(
      name="generalize_ablation", family=base, train_family=generalize.augment(base),
      lstm=generalize.GENERAL_LSTM, rule_name="lstm_general", train=train,
      eval_steps=train.truncation.horizon, variants=generalize.variants(quick, data_dir),
      extra_rules=extra,
      baselines=("adam",),
      num_test_problems=4 if quick else 16, num_tune_problems=2 if quick else 8,
      lr_grid=(1e-3, 1e-2, 1e-1, 1.0) if quick else tuple(10.0 ** (k / 2) for k in range(-8, 1)),
      test_metrics=classification_metrics, test_data=(mnist.test_images, mnist.test_labels),
  )


def main(argv=None) -> dict:
  return command_line.main("generalize_ablation", config, argv, __doc__, data=True)


if __name__ == "__main__":
  main()
