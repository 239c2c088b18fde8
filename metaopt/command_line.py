"""The command line shared by ``experiments/*.py`` (``make <experiment>``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence

from metaopt.distributed import is_main_process
from metaopt.experiment import ExperimentConfig, run_experiment


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


def with_seed(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
  """``cfg`` with every rule meta-trained from ``seed`` (the test problems stay the same).

  Example:
    >>> cfg = with_seed(cfg, 1)   # a second meta-training run of the same experiment
  """
  extra = tuple(dataclasses.replace(r, train=dataclasses.replace(r.train, seed=seed))
                for r in cfg.extra_rules)
  return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                             extra_rules=extra)


def main(name: str, make_config: Callable[..., ExperimentConfig], argv=None,
         doc: str | None = None, data: bool = False,
         after: Callable[[ExperimentConfig, dict, pathlib.Path], None] | None = None) -> dict:
  """Command line shared by ``experiments/*.py``: --quick, --out, --resume, --data-dir, --rules,
  --seed.

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
  parser.add_argument("--seed", type=int, default=None,
                      help="meta-train from this seed (default: the experiment's); writes to "
                           f"results/{name}_seed<seed>/ unless --out is given")
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
  folder = name if args.seed is None else f"{name}_seed{args.seed}"
  out = pathlib.Path(args.out or os.path.join("results", "quick" if args.quick else "", folder))
  cfg = make_config(args.quick, args.data_dir) if data else make_config(args.quick)
  if args.seed is not None:
    cfg = with_seed(cfg, args.seed)
  if args.rules:
    cfg = only_extra_rules(cfg, [r.strip() for r in args.rules.split(",") if r.strip()])
  else:
    cfg = default_extra_rules(cfg)
  checkpoints = pathlib.Path(".cache", "checkpoints", *out.resolve().parts[-2:])
  summary = run_experiment(cfg, out, progress=not args.no_progress, checkpoint_dir=checkpoints,
                           resume=args.resume)
  if after is not None and is_main_process():
    after(cfg, summary, out)
  return summary
