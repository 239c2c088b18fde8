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
from typing import Any, Callable, Sequence

import jax
import numpy as np

from metaopt.baselines import BASELINES, DEFAULT_GRID, tune_baselines
from metaopt.checkpoint import save_meta_params
from metaopt.evaluate import format_table, make_summary, plot_curves, summarize_curves, write_summary
from metaopt.meta_train import MetaTrainConfig, meta_train
from metaopt.networks import RuleConfig
from metaopt.problems.base import ProblemFamily
from metaopt.rule import rule_factory
from metaopt.unroll import jitted_loss_curves, sample_tasks

# Seeds of the problem sets (meta-training draws from its own seed).
TUNE_SET, TEST_SET = 1, 2

# (family, test data, final params of one run) -> {metric name: scalar}, e.g. test accuracy.
TestMetrics = Callable[[ProblemFamily, Any, Any], dict]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One evaluation setting: a problem family and a horizon.

  Attributes:
    name: the variant's key in ``summary.json``.
    family: the problems of this variant (the LSTM is not retrained on them).
    steps: the horizon of its test runs.
    retune: also report the baselines re-tuned on this variant, as ``<name>_retuned``.
  """

  name: str
  family: ProblemFamily
  steps: int
  retune: bool = False


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
      ``test_metrics(family, test_data, params) -> {name: scalar}``.
    test_data: a pytree of arrays handed to ``test_metrics`` (e.g. the test images).
    seed: seeds the tuning and test sets.
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
    names = [v.name for v in self.all_variants()]
    if len(set(names)) != len(names):
      raise ValueError(f"ExperimentConfig.variants: duplicate names in {names}")

  def all_variants(self) -> tuple[Variant, ...]:
    return tuple(self.variants) if self.variants else (Variant("base", self.family, self.eval_steps),)


def _summarize(cfg: ExperimentConfig, family, curves, final_params, hyperparameters) -> dict:
  entry = summarize_curves(curves, hyperparameters)
  if cfg.test_metrics is not None:
    metrics = _run_test_metrics(cfg.test_metrics, family, cfg.test_data, final_params)
    for name, values in metrics.items():
      values = np.asarray(values, np.float64)
      entry[f"{name}_mean"] = float(values.mean())
      entry[f"{name}_sem"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
  return entry


@functools.partial(jax.jit, static_argnums=0)
def _run_test_metrics(metric_fn, family, test_data, final_params):
  return jax.lax.map(lambda params: metric_fn(family, test_data, params), final_params)


def _tune(cfg: ExperimentConfig, family, steps) -> dict:
  tasks, keys = sample_tasks(family, jax.random.fold_in(jax.random.key(cfg.seed), TUNE_SET),
                             cfg.num_tune_problems)
  return tune_baselines(family, tasks, keys, steps, cfg.baselines, cfg.lr_grid)


def evaluate_variant(cfg: ExperimentConfig, variant: Variant, phi: Any, tuned: dict) -> dict:
  """Curves of the learned rule and the tuned baselines on one variant's test runs."""
  test_tasks, test_keys = sample_tasks(
      variant.family, jax.random.fold_in(jax.random.key(cfg.seed), TEST_SET),
      cfg.num_test_problems)

  def run(make, args, hyperparameters):
    curves, final = jitted_loss_curves(make, variant.family, test_tasks, test_keys,
                                       variant.steps, args)
    return _summarize(cfg, variant.family, curves, final, hyperparameters)

  optimizers = {"lstm": run(rule_factory(cfg.lstm), (phi,),
                            {"meta_learning_rate": cfg.train.meta_learning_rate,
                             "num_meta_steps": cfg.train.num_meta_steps})}
  sets = [("", tuned)]
  if variant.retune:
    sets.append(("_retuned", _tune(cfg, variant.family, variant.steps)))
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
  """Meta-train the LSTM, tune the baselines, evaluate everything; write the results.

  Writes ``summary.json``, ``curves.png`` and ``lstm.msgpack`` (phi and its
  configuration) into ``out_dir`` and prints a table. With ``checkpoint_dir``,
  meta-training checkpoints there (and on SIGINT/SIGTERM); ``resume`` continues
  from the newest good checkpoint.

  Returns:
    The summary dict (schema of DESIGN.md section 6).
  """
  out_dir = pathlib.Path(out_dir)
  result = meta_train(cfg.family, cfg.lstm, cfg.train, progress=progress,
                      checkpoint_dir=checkpoint_dir, resume=resume)
  print(f"meta-training: {result.seconds:.1f} s, best validation loss "
        f"{result.best_valid_loss:.4g}, skipped meta-steps {result.num_skipped}")
  save_meta_params(out_dir / "lstm.msgpack", result.phi, cfg.lstm,
                   {"experiment": cfg.name, "train": dataclasses.asdict(cfg.train),
                    "best_valid_loss": result.best_valid_loss})

  start = time.perf_counter()
  tuned = _tune(cfg, cfg.family, cfg.eval_steps)
  variants = {}
  for variant in cfg.all_variants():
    variants[variant.name] = evaluate_variant(cfg, variant, result.phi, tuned)
    print(f"evaluated variant {variant.name} ({time.perf_counter() - start:.0f} s)", flush=True)
  eval_seconds = time.perf_counter() - start

  summary = make_summary(
      cfg.name, variants, result.seconds, eval_seconds,
      lstm_config=cfg.lstm.to_dict(), meta_train_config=dataclasses.asdict(cfg.train),
      meta_train_history={k: result.history[k] for k in result.history if k != "meta_loss"}
      | {"num_skipped": result.num_skipped},
  )
  write_summary(out_dir / "summary.json", summary)
  plot_curves(summary, out_dir / "curves.png")
  print(format_table(summary))
  print(f"wrote {out_dir / 'summary.json'}, {out_dir / 'curves.png'}, {out_dir / 'lstm.msgpack'}")
  return summary


def main(name: str, make_config: Callable[..., ExperimentConfig], argv=None,
         doc: str | None = None, data: bool = False) -> dict:
  """Command line shared by ``experiments/*.py``: --quick, --out, --resume, --data-dir.

  ``QUICK=1`` and ``RESUME=1`` in the environment act like the flags (the
  Makefile passes them through). Checkpoints go to ``.cache/checkpoints/<out>``.
  """
  flag = lambda var: os.environ.get(var, "") not in ("", "0")
  parser = argparse.ArgumentParser(description=doc)
  parser.add_argument("--quick", action="store_true", default=flag("QUICK"),
                      help="reduced run (also QUICK=1); writes to results/quick/")
  parser.add_argument("--resume", action="store_true", default=flag("RESUME"),
                      help="continue meta-training from the newest good checkpoint (also RESUME=1)")
  parser.add_argument("--out", default=None, help=f"output folder (default results/[quick/]{name})")
  parser.add_argument("--no-progress", action="store_true")
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
  checkpoints = pathlib.Path(".cache", "checkpoints", *out.resolve().parts[-2:])
  return run_experiment(cfg, out, progress=not args.no_progress, checkpoint_dir=checkpoints,
                        resume=args.resume)
