"""A learned optimizer across task types: meta-train on a task suite, test on held-out types.

The suite (:mod:`metaopt.problems.suite`) holds image MLPs, logistic regression,
Rosenbrock functions and character language models for meta-training, and
autoencoders, conv nets and quadratics that meta-training never sees (plus
Fashion-MNIST, a held-out data set). The rule is meta-trained on one joint problem
per run, one instance of every meta-training task with its loss divided by its
initial value and randomly reparametrized (:mod:`metaopt.problems.joint`), with
the log-loss objective and Persistent Evolution Strategies (:mod:`metaopt.pes`).
Every task is then evaluated at the meta-training horizon and at 10x it, against
Adam, RMSprop and NAG with their learning rates tuned per task on separate runs,
and against the rule with its multiplier tuned the same way (``<rule>_tuned``).
Run: ``make suite`` (``QUICK=1``: minutes); writes ``results/suite/``.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from experiments.generalize import GENERAL_LSTM
from metaopt import command_line
from metaopt.config import MetaTrainConfig
from metaopt.evaluate import write_summary
from metaopt.experiment import ExperimentConfig, Variant
from metaopt.objectives import Objective
from metaopt.pes import PES
from metaopt.problems.joint import JointFamily, NormalizedFamily
from metaopt.problems.suite import META_TRAIN, make_suite
from metaopt.scoring import bootstrap_iqm, compare, diverged
from metaopt.truncation import Truncation
from metaopt.validation import Validation

HORIZON_MULTIPLES = (1, 10)
# Half-decade grid; tune_learning_rate extends it past an edge when the best rate is there.
LR_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 1))


def rule_config():
  """The per-parameter MLP rule when the package has it, else the generalizing LSTM."""
  try:
    from metaopt.mlp_rule import MLPRuleConfig
  except ImportError:
    return GENERAL_LSTM
  return MLPRuleConfig()


def train_config(quick: bool = False) -> MetaTrainConfig:
  """Meta-training: 100-step runs in truncations of 10, log losses, PES (see module doc)."""
  return MetaTrainConfig(
      truncation=Truncation(horizon=10 if quick else 100, unroll_length=5 if quick else 10),
      objective=Objective(loss="log_loss"),
      batch_size=4 if quick else 8,        # antithetic pairs of joint runs per meta-step
      num_meta_steps=4 if quick else 1500,
      meta_learning_rate=3e-3,
      clip_norm=1.0,
      validation=Validation(every=2 if quick else 100, num_problems=2 if quick else 8),
      phi_average=0.9,
  )


def pes(config, train: MetaTrainConfig) -> PES:
  """PES with ``batch_size`` antithetic pairs and the run's objective and truncation."""
  return PES(config, train.objective, train.truncation.unroll_length,
             num_pairs=train.batch_size, sigma=0.01)


def config(quick: bool = False, data_dir: str | None = None) -> ExperimentConfig:
  """The suite experiment; ``quick`` shrinks the suite, meta-training and evaluation."""
  suite = make_suite(data_dir, seed=0, quick=quick)
  train_tasks = suite.split(META_TRAIN)
  train = train_config(quick)
  horizon = train.truncation.horizon
  variants = tuple(
      Variant(f"{t.name}@{m * horizon}", t.family, m * horizon, retune=True, reuse_tuned=False,
              info={"split": "meta-train" if t.split == META_TRAIN else "held-out",
                    "suite_split": t.split, "task_type": t.task_type, "horizon_multiple": m})
      for t in suite.tasks for m in HORIZON_MULTIPLES)
  return ExperimentConfig(
      name="suite",
      family=JointFamily(tuple(NormalizedFamily(t.family) for t in train_tasks)),
      train_family=JointFamily(tuple(NormalizedFamily(t.training_family())
                                     for t in train_tasks)),
      lstm=rule_config(), rule_name="learned", train=train, estimator=pes,
      eval_steps=horizon, variants=variants, baselines=("adam", "rmsprop", "nag"),
      lr_grid=(1e-3, 1e-2, 1e-1) if quick else LR_GRID, tune_rule_multiplier=True,
      num_test_problems=2 if quick else 16, num_tune_problems=2 if quick else 8,
  )


def suite_scores(summary: dict, rule: str = "learned", reference: str = "adam") -> dict:
  """Win / tie / loss against ``reference``, IQM of normalized final losses, divergences.

  A task's final losses are normalized by the mean initial loss of its test runs (the
  same runs for every optimizer), so scores are comparable across tasks.
  """
  out = {}
  for split in ("meta-train", "held-out"):
    for m in HORIZON_MULTIPLES:
      entries = {n: v for n, v in summary["variants"].items()
                 if v.get("split") == split and v.get("horizon_multiple") == m}
      if not entries:
        continue
      counts = {"win": 0, "tie": 0, "loss": 0}
      normalized = {name: [] for name in (rule, f"{rule}_tuned", "adam", "rmsprop", "nag")}
      divergent = []
      for name, v in entries.items():
        opts = v["optimizers"]
        r, a = opts[rule], opts[reference]
        counts[compare(_num(r["final_loss_mean"]), r["final_loss_sem"] or 0.0,
                       _num(a["final_loss_mean"]), a["final_loss_sem"] or 0.0)] += 1
        f0 = _num(a["loss_mean"][0])
        for opt in normalized:
          if opt in opts:
            normalized[opt].append(np.array([_num(x) for x in opts[opt]["final_losses"]]) / f0)
        if diverged(r["loss_mean"], v["steps"] // m):
          divergent.append(name)
      iqms = {opt: dict(zip(("iqm", "low", "high"), bootstrap_iqm(vals)))
              for opt, vals in normalized.items() if vals}
      out[f"{split}@{m}x"] = {"tasks": len(entries), f"vs_{reference}": counts,
                              "normalized_final_loss_iqm": iqms, "diverged": divergent}
  return out


def _num(x) -> float:
  return np.inf if x is None else float(x)


def after(cfg: ExperimentConfig, summary: dict, out_dir: pathlib.Path) -> None:
  """Add the suite scores to ``summary.json`` and print them."""
  summary["suite_scores"] = suite_scores(summary, cfg.rule_name)
  write_summary(out_dir / "summary.json", summary)
  print(json.dumps(summary["suite_scores"], indent=1))


def main(argv=None) -> dict:
  return command_line.main("suite", config, argv, __doc__, data=True, after=after)


if __name__ == "__main__":
  main()
