"""The standard experiment: meta-train, tune baselines, evaluate all on held-out problems.

``experiments/*.py`` are thin configurations around :func:`run_experiment`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import time
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import jax
import numpy as np

from metaopt.baselines import BASELINES, DEFAULT_GRID, tune_baselines
from metaopt.checkpoint import load_meta_params, load_pretrained, save_meta_params
from metaopt.evaluate import format_table, make_summary, plot_curves, summarize_curves, write_summary
from metaopt.meta_train import MetaTrainConfig, meta_train
from metaopt.networks import RuleConfig
from metaopt.problems.base import ProblemFamily
from metaopt.rule import rule_factory
from metaopt.unroll import jitted_loss_curves, sample_tasks

# Seeds of the problem sets (meta-training draws from its own seed).
TUNE_SET, TEST_SET = 1, 2

# (family, test data, final params, final model state of one run) -> {metric name: scalar},
# e.g. test accuracy.
TestMetrics = Callable[[ProblemFamily, Any, Any, Any], dict]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One evaluation setting: a problem family and a horizon.

  Attributes:
    name: the variant's key in ``summary.json``.
    family: the problems of this variant's test runs (the LSTM is not retrained on them).
    steps: the horizon of its test runs.
    retune: also report the baselines re-tuned on this variant, as ``<name>_retuned``.
    tune_family: where re-tuning runs draw their problems (default ``family``), e.g.
      the training images when ``family`` holds out images for testing.
    test_data: this variant's ``test_data`` for ``test_metrics`` (default the experiment's),
      e.g. the test images of a label subset.
    reuse_tuned: also evaluate the baselines at the rates tuned on the experiment's
      family. With ``retune=True, reuse_tuned=False`` only the baselines re-tuned
      on this variant are evaluated, under their plain names.
  """

  name: str
  family: ProblemFamily
  steps: int
  retune: bool = False
  tune_family: ProblemFamily | None = None
  test_data: Any = None
  reuse_tuned: bool = True


@dataclasses.dataclass(frozen=True)
class ExtraRule:
  """Another learned rule meta-trained and evaluated in the same experiment.

  E.g. the CIFAR experiment's single shared LSTM (``lstm_shared``) next to the
  two-LSTM rule, or ``lstm_sub`` meta-trained on other classes for a transfer test.

  Attributes:
    name: its optimizer name in ``summary.json`` (and ``<name>.msgpack``).
    family: its meta-training family.
    lstm: its network configuration.
    train: its meta-training settings.
    variants: names of the variants it is evaluated on (None: all).
    pretrained: evaluate this already trained rule instead of meta-training one: a
      shipped name (:func:`metaopt.checkpoint.list_pretrained`) or a ``.msgpack`` path,
      which must have been made for ``lstm``.
    valid_family: where its validation problems come from (default ``family``).
    optional: run only when named in ``--rules`` / ``RULES`` (e.g. a costly reference
      rule kept out of the default run's time budget).
  """

  name: str
  family: ProblemFamily | None
  lstm: RuleConfig
  train: MetaTrainConfig
  variants: tuple[str, ...] | None = None
  pretrained: str | None = None
  valid_family: ProblemFamily | None = None
  optional: bool = False


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """An experiment: meta-train on ``family``, evaluate on each variant.

  Attributes:
    name: experiment name (used in ``summary.json``).
    family: the meta-training family; the baselines are tuned on it too.
    lstm: the learned rule's network configuration.
    train: meta-training settings.
    eval_steps: horizon of the baselines' tuning runs and of the default variant.
    variants: evaluation settings (default: one variant ``base`` = ``family``, ``eval_steps``).
    num_test_problems: held-out test runs per variant (fresh tasks and run keys).
    num_tune_problems: validation runs for the baselines' learning-rate search.
    baselines: names from :data:`metaopt.baselines.BASELINES`.
    lr_grid: the initial log-spaced learning-rate grid.
    test_metrics: optional metrics of each run's final parameters (e.g. test accuracy),
      ``test_metrics(family, test_data, params, model_state) -> {name: scalar}``.
    test_data: a pytree of arrays handed to ``test_metrics`` (e.g. the test images).
    seed: seeds the tuning and test sets.
    extra_rules: more learned rules to meta-train and evaluate (:class:`ExtraRule`).
    rule_name: the main rule's name in ``summary.json`` (and ``<rule_name>.msgpack``).
    train_family: the main rule's meta-training problems, if not ``family`` (e.g. an
      :class:`metaopt.problems.AugmentedFamily` of it); validation uses ``family``.
    info: more JSON fields for ``summary.json`` (e.g. which feature network was used).
  """

  name: str
  family: ProblemFamily
  lstm: RuleConfig
  train: MetaTrainConfig
  eval_steps: int = 100
  variants: Sequence[Variant] | None = None
  num_test_problems: int = 128
  num_tune_problems: int = 128
  baselines: Sequence[str] = tuple(BASELINES)
  lr_grid: Sequence[float] = DEFAULT_GRID
  test_metrics: TestMetrics | None = None
  test_data: Any = None
  seed: int = 0
  extra_rules: Sequence[ExtraRule] = ()
  rule_name: str = "lstm"
  train_family: ProblemFamily | None = None
  info: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    unknown = [b for b in self.baselines if b not in BASELINES]
    if unknown:
      raise ValueError(f"ExperimentConfig.baselines: unknown {unknown}; allowed {sorted(BASELINES)}")
    grid = [float(r) for r in self.lr_grid]
    if len(grid) < 3 or min(grid) <= 0:
      raise ValueError(f"ExperimentConfig.lr_grid must hold at least 3 positive learning rates, "
                       f"got {list(self.lr_grid)}")
    for name in ("eval_steps", "num_test_problems", "num_tune_problems"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"ExperimentConfig.{name} must be a positive integer, got "
                         f"{getattr(self, name)!r}")
    for v in self.all_variants():
      if int(v.steps) <= 0:
        raise ValueError(f"variant {v.name!r}: steps must be a positive integer, got {v.steps!r}")
      if not (v.reuse_tuned or v.retune):
        raise ValueError(f"variant {v.name!r}: reuse_tuned=False needs retune=True (else no "
                         "baseline is evaluated)")
    names = [v.name for v in self.all_variants()]
    if len(set(names)) != len(names):
      raise ValueError(f"ExperimentConfig.variants: duplicate names in {names}")
    rules = [self.rule_name] + [r.name for r in self.extra_rules]
    if len(set(rules)) != len(rules) or set(rules) & set(BASELINES):
      raise ValueError(f"ExperimentConfig.extra_rules: names must be distinct and differ from "
                       f"{self.rule_name!r} and the baselines, got {rules[1:]}")
    for r in self.extra_rules:
      unknown = sorted(set(r.variants or ()) - set(names))
      if unknown:
        raise ValueError(f"ExtraRule {r.name!r}: unknown variants {unknown}; variants are {names}")

  def all_variants(self) -> tuple[Variant, ...]:
    return tuple(self.variants) if self.variants else (Variant("base", self.family, self.eval_steps),)


def _summarize(cfg: ExperimentConfig, variant: Variant, curves, final, hyperparameters) -> dict:
  entry = summarize_curves(curves, hyperparameters)
  if cfg.test_metrics is not None:
    test_data = cfg.test_data if variant.test_data is None else variant.test_data
    metrics = _run_test_metrics(cfg.test_metrics, variant.family, test_data, final)
    for name, values in metrics.items():
      values = np.asarray(values, np.float64)
      entry[f"{name}_mean"] = float(values.mean())
      entry[f"{name}_sem"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
  return entry


@functools.partial(jax.jit, static_argnums=0)
def _run_test_metrics(metric_fn, family, test_data, final):
  return jax.lax.map(lambda run: metric_fn(family, test_data, *run), final)


def _tune(cfg: ExperimentConfig, family, steps) -> dict:
  tasks, keys = sample_tasks(family, jax.random.fold_in(jax.random.key(cfg.seed), TUNE_SET),
                             cfg.num_tune_problems)
  return tune_baselines(family, tasks, keys, steps, cfg.baselines, cfg.lr_grid)


def evaluate_variant(cfg: ExperimentConfig, variant: Variant, rules: dict, tuned: dict) -> dict:
  """Curves of the learned rules and the tuned baselines on one variant's test runs.

  Args:
    cfg: the experiment.
    variant: where to evaluate.
    rules: ``{name: (rule config, phi, hyper-parameters to record)}`` of the learned rules.
    tuned: the baselines' tuning results (:func:`metaopt.baselines.tune_baselines`).
  """
  test_tasks, test_keys = sample_tasks(
      variant.family, jax.random.fold_in(jax.random.key(cfg.seed), TEST_SET),
      cfg.num_test_problems)

  def run(make, args, hyperparameters):
    curves, final = jitted_loss_curves(make, variant.family, test_tasks, test_keys,
                                       variant.steps, args)
    return _summarize(cfg, variant, curves, final, hyperparameters)

  optimizers = {name: run(rule_factory(config), (phi,), hyper)
                for name, (config, phi, hyper) in rules.items()}
  sets = [("", tuned)] if variant.reuse_tuned else []
  if variant.retune:
    retuned = _tune(cfg, variant.tune_family or variant.family, variant.steps)
    sets.append(("_retuned" if variant.reuse_tuned else "", retuned))
  for suffix, rates in sets:
    for name, t in rates.items():
      entry = run(BASELINES[name], (t["learning_rate"],), {"learning_rate": t["learning_rate"]})
      entry["lr_grid"] = {f"{lr:.6g}": v for lr, v in t["grid"].items()}
      optimizers[name + suffix] = entry
  return {"steps": variant.steps, "num_test_problems": cfg.num_test_problems,
          "optimizers": optimizers}


def run_experiment(cfg: ExperimentConfig, out_dir: str | pathlib.Path,
                   progress: bool = True, checkpoint_dir: str | pathlib.Path | None = None,
                   resume: bool = False) -> dict:
  """Meta-train the LSTM(s), tune the baselines, evaluate everything; write the results.

  Writes ``summary.json``, ``curves.png`` and ``lstm.msgpack`` (phi and its
  configuration; ``<name>.msgpack`` for each extra rule) into ``out_dir`` and
  prints a table; while variants remain, ``summary.partial.json`` holds the
  ones evaluated so far. With ``checkpoint_dir``, meta-training checkpoints there (and
  on SIGINT/SIGTERM; extra rules in sub-folders); ``resume`` continues from the
  newest good checkpoint.

  Returns:
    The summary dict (schema of DESIGN.md section 6).
  """
  out_dir = pathlib.Path(out_dir)
  main_rule = ExtraRule(cfg.rule_name, cfg.train_family or cfg.family, cfg.lstm, cfg.train,
                        valid_family=cfg.family)
  trained, extra = {}, {}
  for rule in (main_rule, *cfg.extra_rules):
    if rule.pretrained is not None:
      trained[rule.name] = (rule, _load_rule(rule))
      extra[rule.name] = {"pretrained": rule.pretrained, "lstm_config": rule.lstm.to_dict()}
      continue
    folder = checkpoint_dir
    if checkpoint_dir is not None and rule is not main_rule:
      folder = pathlib.Path(checkpoint_dir) / rule.name
    result = meta_train(rule.family, rule.lstm, rule.train, progress=progress,
                        checkpoint_dir=folder, resume=resume, valid_family=rule.valid_family)
    print(f"meta-training {rule.name}: {result.seconds:.1f} s, best validation loss "
          f"{result.best_valid_loss:.4g}, skipped meta-steps {result.num_skipped}")
    save_meta_params(out_dir / f"{rule.name}.msgpack", result.phi, rule.lstm,
                     {"experiment": cfg.name, "train": dataclasses.asdict(rule.train),
                      "best_valid_loss": result.best_valid_loss})
    trained[rule.name] = (rule, result)
    if rule is not main_rule:
      extra[rule.name] = _training_record(rule, result)

  start = time.perf_counter()
  # Tuned on the experiment's family only when some variant reuses those rates.
  tuned = (_tune(cfg, cfg.family, cfg.eval_steps)
           if any(v.reuse_tuned for v in cfg.all_variants()) else {})
  variants = {}
  for variant in cfg.all_variants():
    rules = {name: (rule.lstm, result.phi,
                    {"pretrained": rule.pretrained} if rule.pretrained else
                    {"meta_learning_rate": rule.train.meta_learning_rate,
                     "num_meta_steps": rule.train.num_meta_steps})
             for name, (rule, result) in trained.items()
             if rule.variants is None or variant.name in rule.variants}
    variants[variant.name] = evaluate_variant(cfg, variant, rules, tuned)
    elapsed = time.perf_counter() - start
    print(f"evaluated variant {variant.name} ({elapsed:.0f} s since evaluation began)", flush=True)
    if len(variants) < len(cfg.all_variants()):  # long evaluations: keep what is done so far
      write_summary(out_dir / "summary.partial.json",
                    _summary(cfg, variants, trained, extra, elapsed))
  summary = _summary(cfg, variants, trained, extra, time.perf_counter() - start)
  write_summary(out_dir / "summary.json", summary)
  (out_dir / "summary.partial.json").unlink(missing_ok=True)
  plot_curves(summary, out_dir / "curves.png", main=cfg.rule_name)
  print(format_table(summary))
  print(f"wrote {out_dir / 'summary.json'}, {out_dir / 'curves.png'}, "
        f"{out_dir / (cfg.rule_name + '.msgpack')}")
  return summary


def _load_rule(rule: ExtraRule):
  """A pretrained rule as a (phi-only) training result."""
  if rule.pretrained.endswith(".msgpack"):
    phi, _, meta = load_meta_params(rule.pretrained, rule.lstm)
  else:
    phi, config, meta = load_pretrained(rule.pretrained)
    if config != rule.lstm:
      raise ValueError(f"ExtraRule {rule.name!r}: pretrained rule {rule.pretrained!r} was made "
                       f"for {config}, not for {rule.lstm}")
  return SimpleNamespace(phi=phi, best_valid_loss=meta.get("best_valid_loss"))


def _summary(cfg: ExperimentConfig, variants: dict, trained: dict, extra: dict,
             eval_seconds: float) -> dict:
  record = _training_record(*trained[cfg.rule_name])
  return make_summary(cfg.name, variants, record.pop("meta_train_seconds"), eval_seconds,
                      **cfg.info, **record,
                      **({"extra_rules": extra} if extra else {}))


def _training_record(rule: ExtraRule, result) -> dict:
  return {"meta_train_seconds": result.seconds, "lstm_config": rule.lstm.to_dict(),
          "meta_train_config": dataclasses.asdict(rule.train),
          "meta_train_history": {k: v for k, v in result.history.items() if k != "meta_loss"}
          | {"num_skipped": result.num_skipped}}


def only_extra_rules(cfg: ExperimentConfig, names: Sequence[str]) -> ExperimentConfig:
  """``cfg`` with only the named extra rules (e.g. to run one row of an ablation).

  Example:
    >>> cfg = only_extra_rules(cfg, ["lstm_imitation"])
  """
  known = [r.name for r in cfg.extra_rules]
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ValueError(f"only_extra_rules: unknown rules {unknown}; experiment {cfg.name!r} "
                     f"has {known}")
  return dataclasses.replace(cfg, extra_rules=tuple(r for r in cfg.extra_rules if r.name in names))


def default_extra_rules(cfg: ExperimentConfig) -> ExperimentConfig:
  """``cfg`` without its optional extra rules (what a run without ``--rules`` trains).

  Example:
    >>> cfg = default_extra_rules(cfg)   # e.g. make cifar without lstm_paper
  """
  return dataclasses.replace(cfg, extra_rules=tuple(r for r in cfg.extra_rules if not r.optional))


def main(name: str, make_config: Callable[..., ExperimentConfig], argv=None,
         doc: str | None = None, data: bool = False,
         after: Callable[[ExperimentConfig, dict, pathlib.Path], None] | None = None) -> dict:
  """Command line shared by ``experiments/*.py``: --quick, --out, --resume, --data-dir, --rules.

  ``QUICK=1``, ``RESUME=1`` and ``RULES=a,b`` in the environment act like the flags
  (the Makefile passes them through). Checkpoints go to ``.cache/checkpoints/<out>``.
  ``after(cfg, summary, out_dir)`` runs once the results are written (e.g. extra plots).
  """
  flag = lambda var: os.environ.get(var, "") not in ("", "0")
  parser = argparse.ArgumentParser(description=doc)
  parser.add_argument("--quick", action="store_true", default=flag("QUICK"),
                      help="reduced run (also QUICK=1); writes to results/quick/")
  parser.add_argument("--resume", action="store_true", default=flag("RESUME"),
                      help="continue meta-training from the newest good checkpoint (also RESUME=1)")
  parser.add_argument("--out", default=None, help=f"output folder (default results/[quick/]{name})")
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument("--rules", default=os.environ.get("RULES") or None,
                      help="comma-separated extra rules to run (also RULES=...); the main rule "
                           "always runs, the other extra rules are skipped; without it every "
                           "extra rule but the optional ones runs")
  if data:
    parser.add_argument("--data-dir", default=None,
                        help="folder of the original data files (default $METAOPT_DATA_DIR)")
  args = parser.parse_args(argv)
  if args.quick and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    # A quick run is dominated by ~40 XLA compilations of tiny programs: compile them
    # unoptimized (about 2x faster overall). No effect once JAX's backend has started.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()
  out = pathlib.Path(args.out or os.path.join("results", "quick" if args.quick else "", name))
  cfg = make_config(args.quick, args.data_dir) if data else make_config(args.quick)
  if args.rules:
    cfg = only_extra_rules(cfg, [r.strip() for r in args.rules.split(",") if r.strip()])
  else:
    cfg = default_extra_rules(cfg)
  checkpoints = pathlib.Path(".cache", "checkpoints", *out.resolve().parts[-2:])
  summary = run_experiment(cfg, out, progress=not args.no_progress, checkpoint_dir=checkpoints,
                           resume=args.resume)
  if after is not None:
    after(cfg, summary, out)
  return summary
