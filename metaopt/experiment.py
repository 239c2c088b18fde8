"""The standard experiment: meta-train, tune baselines, evaluate all on held-out problems.

``experiments/*.py`` are thin configurations around :func:`run_experiment`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.baselines import BASELINES, tune_baselines, tune_learning_rate
from metaopt.checkpoint import load_meta_params, load_pretrained, save_meta_params
from metaopt.distributed import is_main_process
from metaopt.evaluate import (
  format_table,
  make_summary,
  plot_curves,
  summarize_curves,
  write_summary,
)
from metaopt.experiment_config import TEST_SET, TUNE_SET, ExperimentConfig, ExtraRule, Variant
from metaopt.rule import learned_rule
from metaopt.trainer import meta_train
from metaopt.unroll import jitted_loss_curves, sample_tasks


def _summarize(cfg: ExperimentConfig, variant: Variant, curves, final, hyperparameters) -> dict:
  entry = summarize_curves(curves, hyperparameters)
  if cfg.test_metrics is not None:
    test_data = cfg.test_data if variant.test_data is None else variant.test_data
    metrics = _run_test_metrics(cfg.test_metrics, variant.family, test_data, final)
    for name, values in metrics.items():
      values = np.asarray(values, np.float64)
      entry[f"{name}_mean"] = float(values.mean())
      sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
      entry[f"{name}_sem"] = float(sem)
  return entry


@functools.partial(jax.jit, static_argnums=0)
def _run_test_metrics(metric_fn, family, test_data, final):
  return jax.lax.map(lambda run: metric_fn(family, test_data, *run), final)


def _tuning_set(cfg: ExperimentConfig, family, num: int | None = None):
  return sample_tasks(family, jax.random.fold_in(jax.random.key(cfg.seed), TUNE_SET),
                      num or cfg.num_tune_problems)


def _tune(cfg: ExperimentConfig, family, steps) -> dict:
  tasks, keys = _tuning_set(cfg, family)
  return tune_baselines(family, tasks, keys, steps, cfg.baselines, cfg.lr_grid)


def _near(center: float) -> tuple[float, ...]:
  """Three half-decade-spaced rates centered on ``center``."""
  return tuple(center * 10.0 ** (k / 2) for k in (-1, 0, 1))


def _test_curves(make, family, tasks, keys, steps, args, chunk: int):
  """``jitted_loss_curves`` over the test runs in chunks of ``chunk`` runs (the tuning
  runs' count, so the tuning runs' compiled program is reused); a last partial chunk is
  filled up with repeats of the first runs, whose results are dropped."""
  n = keys.shape[0]
  padded = jax.tree.map(lambda a: jnp.take(a, jnp.arange(-(-n // chunk) * chunk) % n, axis=0),
                        (tasks, keys))
  parts = [jitted_loss_curves(make, family, *jax.tree.map(lambda a: a[i:i + chunk], padded),
                              steps, args) for i in range(0, n, chunk)]
  whole = parts[0] if len(parts) == 1 else jax.tree.map(lambda *x: jnp.concatenate(x), *parts)
  return jax.tree.map(lambda a: a[:n], whole)


def evaluate_variant(cfg: ExperimentConfig, variant: Variant, rules: dict, tuned: dict,
                     near: dict | None = None) -> dict:
  """Curves of the learned rules and the tuned baselines on one variant's test runs.

  Args:
    cfg: the experiment.
    variant: where to evaluate.
    rules: ``{name: (rule config, phi, hyper-parameters to record)}`` of the learned rules.
    tuned: the baselines' tuning results (:func:`metaopt.baselines.tune_baselines`).
    near: the summary entry of the variant named by ``variant.tune_near`` (its tuned rates
      center this variant's search).
  """
  test_tasks, test_keys = sample_tasks(
      variant.family, jax.random.fold_in(jax.random.key(cfg.seed), TEST_SET),
      cfg.num_test_problems)
  tune_family = variant.tune_family or variant.family
  num_tune = variant.num_tune_problems or cfg.num_tune_problems
  n_test = cfg.num_test_problems

  def run(make, args, hyperparameters, tuned_program: bool = True):
    # A tuned optimizer's test runs reuse its tuning program (chunks of the tuning runs).
    curves, final = _test_curves(make, variant.family, test_tasks, test_keys, variant.steps,
                                 args, num_tune if tuned_program else n_test)
    return _summarize(cfg, variant, curves, final, hyperparameters)

  def grid(name: str, key: str, default) -> tuple[float, ...]:
    return default if near is None else _near(near["optimizers"][name]["hyperparameters"][key])

  tune_tasks, tune_keys = _tuning_set(cfg, tune_family, num_tune)

  optimizers = {}
  for name, (config, phi, hyper) in rules.items():
    # With multiplier tuning, the untuned rule runs the tuned one's program at 1.
    untuned = (phi, config, jnp.float32(1.0)) if cfg.tune_rule_multiplier else (phi, config)
    optimizers[name] = run(learned_rule, untuned, hyper, cfg.tune_rule_multiplier)
  if cfg.tune_rule_multiplier:
    for name, (config, phi, hyper) in rules.items():
      best, table = tune_learning_rate(
          learned_rule, tune_family, tune_tasks, tune_keys, variant.steps,
          grid(name + "_tuned", "learning_rate_multiplier", cfg.multiplier_grid or cfg.lr_grid),
          args=(phi, config))
      entry = run(learned_rule, (phi, config, jnp.float32(best)),
                  {**hyper, "learning_rate_multiplier": best})
      entry["lr_grid"] = {f"{m:.6g}": v for m, v in table.items()}
      optimizers[name + "_tuned"] = entry
  names = tuple(variant.baselines or cfg.baselines)
  sets = [("", {n: tuned[n] for n in names})] if variant.reuse_tuned else []
  if variant.retune:
    retuned = tune_baselines(tune_family, tune_tasks, tune_keys, variant.steps, names,
                             {n: grid(n, "learning_rate", cfg.lr_grid) for n in names})
    sets.append(("_retuned" if variant.reuse_tuned else "", retuned))
  done = {}  # a re-tuned baseline that lands on the same rate has the same test runs
  for suffix, rates in sets:
    for name, t in rates.items():
      rate = t["learning_rate"]
      if (name, rate) not in done:
        # A strong f32, as in the tuning runs (a Python float would compile another program).
        done[name, rate] = run(BASELINES[name], (jnp.float32(rate),), {"learning_rate": rate})
      entry = dict(done[name, rate])
      entry["lr_grid"] = {f"{lr:.6g}": v for lr, v in t["grid"].items()}
      optimizers[name + suffix] = entry
  return {"steps": variant.steps, "num_test_problems": cfg.num_test_problems, **variant.info,
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
    The summary dict (the results schema of docs/design.md).
  """
  out_dir = pathlib.Path(out_dir)
  main = is_main_process()
  main_rule = ExtraRule(cfg.rule_name, cfg.train_family or cfg.family, cfg.lstm, cfg.train,
                        valid_family=cfg.family, estimator=cfg.estimator)
  trained, extra = {}, {}
  for rule in (main_rule, *cfg.extra_rules):
    if rule.pretrained is not None:
      trained[rule.name] = (rule, _load_rule(rule))
      extra[rule.name] = {"pretrained": rule.pretrained, "lstm_config": rule.lstm.to_dict()}
      continue
    folder = checkpoint_dir
    if checkpoint_dir is not None and rule is not main_rule:
      folder = pathlib.Path(checkpoint_dir) / rule.name
    estimator = None if rule.estimator is None else rule.estimator(rule.lstm, rule.train)
    result = meta_train(rule.family, rule.lstm, rule.train, estimator=estimator,
                        valid_family=rule.valid_family, checkpoint_dir=folder, resume=resume,
                        progress=progress)
    if main:
      print(f"meta-training {rule.name}: {result.seconds:.1f} s, best validation loss "
            f"{result.best_valid_loss:.4g}, skipped meta-steps {result.num_skipped}")
      save_meta_params(out_dir / f"{rule.name}.msgpack", result.phi, rule.lstm,
                       {"experiment": cfg.name, "train": rule.train.to_dict(),
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
    near = variants[variant.tune_near] if variant.tune_near else None
    variants[variant.name] = evaluate_variant(cfg, variant, rules, tuned, near)
    elapsed = time.perf_counter() - start
    if not main:
      continue
    print(f"evaluated variant {variant.name} ({elapsed:.0f} s since evaluation began)", flush=True)
    if len(variants) < len(cfg.all_variants()):  # long evaluations: keep what is done so far
      write_summary(out_dir / "summary.partial.json",
                    _summary(cfg, variants, trained, extra, elapsed))
  summary = _summary(cfg, variants, trained, extra, time.perf_counter() - start)
  if not main:  # under jax.distributed, process 0 writes the results
    return summary
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
          "meta_train_config": rule.train.to_dict(),
          "meta_train_history": {k: v for k, v in dataclasses.asdict(result.history).items()
                                 if k != "meta_loss"}
          | {"num_skipped": result.num_skipped}}
