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

from metaopt import command_line
from metaopt.config import MetaTrainConfig
from metaopt.data import load_dataset
from metaopt.evaluate import write_summary
from metaopt.experiment import ExperimentConfig, Variant
from metaopt.mlp_rule import MLPRuleConfig
from metaopt.objectives import Objective
from metaopt.pes import PES
from metaopt.problems.joint import JointFamily, NormalizedFamily
from metaopt.problems.mlp import MLPFamily
from metaopt.problems.suite import META_TRAIN, make_suite
from metaopt.scoring import bootstrap_iqm, compare, diverged
from metaopt.truncation import Truncation
from metaopt.validation import Validation

# Half-decade grid; tune_learning_rate extends it past an edge when the best rate is there.
LR_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 1))
# The learned rule's multiplier: a decade either way of the trained step (1).
MULTIPLIER_GRID = tuple(10.0 ** (k / 2) for k in range(-2, 3))


def rule_config() -> MLPRuleConfig:
  """The per-parameter MLP rule on an Adam base: untrained, it is Adam at rate 0.01.

  Its time features tanh(t / tau) have tau <= 30, so they saturate within the 100-step
  meta-training runs: at step 1000 the rule sees the inputs it saw by step 100.
  """
  return MLPRuleConfig(adam_base_decay=0.9, step_mult=0.01, time_scales=(1, 3, 10, 30))


def train_config(quick: bool = False) -> MetaTrainConfig:
  """Meta-training: 100-step runs in truncations of 10, log losses, PES (see module doc)."""
  return MetaTrainConfig(
      truncation=Truncation(horizon=10 if quick else 100, unroll_length=5 if quick else 10),
      objective=Objective(loss="log_loss"),
      batch_size=4 if quick else 8,        # antithetic pairs of joint runs per meta-step
      num_meta_steps=4 if quick else 1000,
      meta_learning_rate=3e-3,
      clip_norm=1.0,
      validation=Validation(every=2 if quick else 100, num_problems=2 if quick else 8),
      phi_average=0.9,
  )


def pes(config, train: MetaTrainConfig) -> PES:
  """PES with ``batch_size`` antithetic pairs and the run's objective and truncation."""
  return PES(config, train.objective, train.truncation.unroll_length,
             num_pairs=train.batch_size, sigma=0.01)


def paper_mnist_family(data_dir: str | None = None, quick: bool = False):
  """The paper's MNIST base net (one hidden layer of 20 sigmoid units, batches of 128)."""
  ds = load_dataset("mnist", data_dir)
  return MLPFamily.from_dataset(ds, init_scale=0.01, batch_size=32 if quick else 128,
                                hidden_sizes=(20,), activation="sigmoid")


def variants(suite, horizon: int, paper_family, quick: bool = False) -> tuple[Variant, ...]:
  """Every task at the meta-training horizon; held-out tasks also at 10x it; the paper net.

  At 10x, re-tuning searches around the rates tuned at 1x (``Variant.tune_near``) on
  fewer runs, and only Adam (the reference of the scores) is tuned and run: the 10x
  runs cost ten times as much, and this keeps ``make suite`` within a working session.
  """
  out = []
  for t in suite.tasks:
    held_out = t.split != META_TRAIN
    info = lambda m: {"split": "held-out" if held_out else "meta-train", "suite_split": t.split,
                      "task_type": t.task_type, "horizon_multiple": m}
    one = Variant(f"{t.name}@{horizon}", t.family, horizon, retune=True, reuse_tuned=False,
                  info=info(1))
    out.append(one)
    if held_out:
      out.append(Variant(f"{t.name}@{10 * horizon}", t.family, 10 * horizon, retune=True,
                         reuse_tuned=False, info=info(10), tune_near=one.name,
                         baselines=("adam",), num_tune_problems=2 if quick else 4))
  out.append(Variant(f"mnist_paper@{horizon}", paper_family, horizon, retune=True,
                     reuse_tuned=False, info={"split": "paper", "task_type": "mlp",
                                              "horizon_multiple": 1}))
  return tuple(out)


def config(quick: bool = False, data_dir: str | None = None) -> ExperimentConfig:
  """The suite experiment; ``quick`` shrinks the suite, meta-training and evaluation."""
  suite = make_suite(data_dir, seed=0, quick=quick)
  train_tasks = suite.split(META_TRAIN)
  train = train_config(quick)
  horizon = train.truncation.horizon
  return ExperimentConfig(
      name="suite",
      family=JointFamily(tuple(NormalizedFamily(t.family) for t in train_tasks)),
      train_family=JointFamily(tuple(NormalizedFamily(t.training_family())
                                     for t in train_tasks)),
      lstm=rule_config(), rule_name="learned", train=train, estimator=pes,
      eval_steps=horizon,
      variants=variants(suite, horizon, paper_mnist_family(data_dir, quick), quick),
      baselines=("adam", "rmsprop", "nag"),
      lr_grid=(1e-3, 1e-2, 1e-1) if quick else LR_GRID, tune_rule_multiplier=True,
      multiplier_grid=MULTIPLIER_GRID,
      num_test_problems=2 if quick else 16, num_tune_problems=2 if quick else 8,
  )


# (score group, split of its variants, suite_split filter or None, horizon multiple)
SCORE_GROUPS = (("meta-train@1x", "meta-train", None, 1), ("held-out@1x", "held-out", None, 1),
                ("held-out@10x", "held-out", None, 10),
                ("held-out-type@1x", "held-out", "held_out_type", 1),
                ("held-out-type@10x", "held-out", "held_out_type", 10),
                ("paper@1x", "paper", None, 1))


def suite_scores(summary: dict, rule: str = "learned", reference: str = "adam") -> dict:
  """Win / tie / loss against ``reference``, IQM of normalized final losses, divergences.

  A task's final losses are normalized by the mean initial loss of its test runs (the
  same runs for every optimizer), so scores are comparable across tasks. A tie is a
  difference within 2 standard errors (:func:`metaopt.scoring.compare`); a divergence is a
  non-finite loss or a smoothed late rise above the loss at the meta-training horizon.
  """
  out = {}
  for group, split, suite_split, m in SCORE_GROUPS:
    entries = {n: v for n, v in summary["variants"].items()
               if v.get("split") == split and v.get("horizon_multiple") == m
               and suite_split in (None, v.get("suite_split"))}
    if not entries:
      continue
    counts = {"win": 0, "tie": 0, "loss": 0}
    normalized, divergent, per_task = {}, [], {}
    for name, v in entries.items():
      opts = v["optimizers"]
      r, a = opts[rule], opts[reference]
      verdict = compare(_num(r["final_loss_mean"]), r["final_loss_sem"] or 0.0,
                        _num(a["final_loss_mean"]), a["final_loss_sem"] or 0.0)
      counts[verdict] += 1
      per_task[name] = verdict
      f0 = _num(a["loss_mean"][0])
      for opt, entry in opts.items():
        finals = np.array([_num(x) for x in entry["final_losses"]]) / f0
        normalized.setdefault(opt, []).append(finals)
      if diverged(r["loss_mean"], v["steps"] // m):
        divergent.append(name)
    iqms = {opt: dict(zip(("iqm", "low", "high"), bootstrap_iqm(vals)))
            for opt, vals in normalized.items() if len(vals) == len(entries)}
    out[group] = {"tasks": len(entries), f"vs_{reference}": counts,
                  f"lower_mean_than_{reference}": sum(
                      _num(v["optimizers"][rule]["final_loss_mean"])
                      < _num(v["optimizers"][reference]["final_loss_mean"])
                      for v in entries.values()),
                  "verdicts": per_task, "normalized_final_loss_iqm": iqms,
                  "diverged": divergent}
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
