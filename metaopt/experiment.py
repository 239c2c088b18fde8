"""The standard experiment: meta-train, tune baselines, evaluate all on held-out problems.

``experiments/*.py`` are thin configurations around :func:`run_experiment`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Sequence

import jax

from metaopt.baselines import BASELINES, DEFAULT_GRID, tune_baselines
from metaopt.checkpoint import save_meta_params
from metaopt.evaluate import format_table, make_summary, plot_curves, summarize_curves, write_summary
from metaopt.meta_train import MetaTrainConfig, meta_train
from metaopt.networks import LSTMConfig
from metaopt.problems.base import ProblemFamily
from metaopt.rule import learned_rule
from metaopt.unroll import jitted_loss_curves, sample_tasks

# Seeds of the three disjoint problem sets (meta-training draws from its own seed).
TUNE_SET, TEST_SET = 1, 2


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One experiment with a single variant.

  Attributes:
    name: experiment name (results go to ``<out>/<name>/``).
    family: the problem family (train, tune and test problems all come from it).
    lstm: the learned rule's network configuration.
    train: meta-training settings.
    eval_steps: horizon of the test runs.
    num_test_problems: held-out test problems (fresh tasks and run keys).
    num_tune_problems: validation problems for the baselines' learning-rate search.
    baselines: names from :data:`metaopt.baselines.BASELINES`.
    lr_grid: the initial log-spaced learning-rate grid.
    seed: seeds the tuning and test sets.
  """

  name: str
  family: ProblemFamily
  lstm: LSTMConfig
  train: MetaTrainConfig
  eval_steps: int = 100
  num_test_problems: int = 128
  num_tune_problems: int = 128
  baselines: Sequence[str] = tuple(BASELINES)
  lr_grid: Sequence[float] = DEFAULT_GRID
  seed: int = 0


def run_experiment(cfg: ExperimentConfig, out_dir: str | pathlib.Path,
                   progress: bool = True) -> dict:
  """Meta-train the LSTM, tune the baselines, evaluate everything; write the results.

  Writes ``summary.json``, ``curves.png`` and ``lstm.msgpack`` (phi and its
  configuration) into ``out_dir`` and prints a table.

  Returns:
    The summary dict (schema of DESIGN.md section 6, one variant ``base``).
  """
  out_dir = pathlib.Path(out_dir)
  unknown = [b for b in cfg.baselines if b not in BASELINES]
  if unknown:
    raise ValueError(f"ExperimentConfig.baselines: unknown {unknown}; allowed {list(BASELINES)}")
  result = meta_train(cfg.family, cfg.lstm, cfg.train, progress=progress)
  print(f"meta-training: {result.seconds:.1f} s, best validation loss "
        f"{result.best_valid_loss:.4g}, skipped meta-steps {result.num_skipped}")
  save_meta_params(out_dir / "lstm.msgpack", result.phi, cfg.lstm,
                   {"experiment": cfg.name, "train": dataclasses.asdict(cfg.train),
                    "best_valid_loss": result.best_valid_loss})

  start = time.perf_counter()
  root = jax.random.key(cfg.seed)
  tune_tasks, tune_keys = sample_tasks(cfg.family, jax.random.fold_in(root, TUNE_SET),
                                       cfg.num_tune_problems)
  test_tasks, test_keys = sample_tasks(cfg.family, jax.random.fold_in(root, TEST_SET),
                                       cfg.num_test_problems)
  tuned = tune_baselines(cfg.family, tune_tasks, tune_keys, cfg.eval_steps, cfg.baselines,
                         cfg.lr_grid)
  optimizers = {"lstm": summarize_curves(
      jitted_loss_curves(functools.partial(learned_rule, config=cfg.lstm), cfg.family,
                         test_tasks, test_keys, cfg.eval_steps, (result.phi,)),
      {"meta_learning_rate": cfg.train.meta_learning_rate,
       "num_meta_steps": cfg.train.num_meta_steps})}
  for name, t in tuned.items():
    curves = jitted_loss_curves(BASELINES[name], cfg.family, test_tasks, test_keys,
                                cfg.eval_steps, (t["learning_rate"],))
    optimizers[name] = summarize_curves(curves, {"learning_rate": t["learning_rate"]})
    optimizers[name]["lr_grid"] = {f"{lr:.6g}": v for lr, v in t["grid"].items()}
  eval_seconds = time.perf_counter() - start

  summary = make_summary(
      cfg.name,
      {"base": {"steps": cfg.eval_steps, "num_test_problems": cfg.num_test_problems,
                "optimizers": optimizers}},
      result.seconds, eval_seconds,
      lstm_config=cfg.lstm.to_dict(), meta_train_config=dataclasses.asdict(cfg.train),
      meta_train_history={"valid_step": result.history["valid_step"],
                          "valid_loss": result.history["valid_loss"],
                          "num_skipped": result.num_skipped},
  )
  write_summary(out_dir / "summary.json", summary)
  plot_curves(summary, out_dir / "curves.png")
  print(format_table(summary))
  print(f"wrote {out_dir / 'summary.json'}, {out_dir / 'curves.png'}, {out_dir / 'lstm.msgpack'}")
  return summary
