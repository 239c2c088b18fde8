"""Markdown tables of experiments' ``summary.json`` files (for :mod:`experiments.report`)."""

from __future__ import annotations

import json
import math
import pathlib
import re

import numpy as np

# Experiments with a make target, in the order of the README table.
MAKE_TARGETS = {"quadratic": "make quadratic", "mnist": "make mnist",
                "mnist_long": "make mnist-long", "cifar": "make cifar", "art": "make art",
                "generalize": "make generalize",
                "generalize_ablation": "make generalize-ablation", "suite": "make suite"}
BASELINES = ("sgd", "rmsprop", "adam", "nag")
# Experiments whose results have a page of their own (the README table links there).
OWN_PAGES = {"suite": "docs/suite.md"}


class ReportError(Exception):
  """A generated block names something that is not in results/, or a summary has no block."""


def _num(x: float | None, digits: int = 4) -> str:
  """``digits`` significant digits, fixed notation for everyday magnitudes (below 10^6)."""
  if x is None or not math.isfinite(x):
    return "–"
  if x == 0:
    return "0"
  if abs(x) >= 1e6:  # a diverged run's mean: scientific notation
    return f"{x:.{digits - 1}e}"
  decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
  return f"{x:.{decimals}f}"


def _g(x: float) -> str:
  """A hyper-parameter: 3 significant digits, no trailing zeros."""
  return f"{x:.3g}"


def _mean_sem(o: dict, name: str) -> str:
  mean = o.get(f"{name}_mean")
  if mean is None:
    return "diverged" if name == "final_loss" else "–"
  sem = o.get(f"{name}_sem")
  return _num(mean) + ("" if sem is None else f" ± {_num(sem, 2)}")


def _seconds(s: float) -> str:
  return f"{s:.0f} s" + (f" ({s / 60:.1f} min)" if s >= 120 else "")


def _is_baseline(name: str) -> bool:
  return re.fullmatch(rf"({'|'.join(BASELINES)})(_retuned)?", name) is not None


def _final(o: dict) -> float:
  value = o.get("final_loss_mean")
  return math.inf if value is None else value


def _summaries(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """results/KEY/summary.json and results/KEY_summary.json, without results/quick/."""
  found = {}
  for path in sorted((root / "results").rglob("*summary.json")):
    rel = path.relative_to(root / "results").as_posix()
    if rel.startswith("quick/") or path.name.endswith(".partial.json"):
      continue
    suffix = "/summary.json" if path.name == "summary.json" else "_summary.json"
    key = rel[:-len(suffix)]
    found[key] = path
  return found


def _load(path: pathlib.Path) -> dict:
  return json.loads(path.read_text())


def _learned_cell(o: dict) -> str:
  hp = o.get("hyperparameters", {})
  if "learning_rate" in hp:
    return _g(hp["learning_rate"])
  parts = []
  if "meta_learning_rate" in hp:
    parts.append(f"meta-lr {_g(hp['meta_learning_rate'])}")
  if "num_meta_steps" in hp:
    parts.append(f"{hp['num_meta_steps']} meta-steps")
  return "learned" + (f" ({', '.join(parts)})" if parts else "")


def variant_table(v: dict) -> list[str]:
  """Optimizers of one variant, best final loss first; the best in bold."""
  extras = sorted({k[:-5] for o in v["optimizers"].values() for k in o
                   if k.endswith("_mean") and k not in ("final_loss_mean", "loss_mean")})
  header = ["optimizer", "final loss", "mean of last 10 steps", "mean over the run"]
  header += [m.replace("_", " ") for m in extras] + ["learning rate"]
  lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
  rows = sorted(v["optimizers"].items(), key=lambda kv: (_final(kv[1]), kv[0]))
  best = _final(rows[0][1])
  for name, o in rows:
    curve = o.get("loss_mean") or []
    finite = [x for x in curve[1:] if x is not None and math.isfinite(x)]
    complete = curve and len(finite) == len(curve) - 1
    last10 = _num(float(np.mean(finite[-10:]))) if complete else "–"
    run_mean = _num(float(np.mean(finite))) if complete else "–"
    final = _mean_sem(o, "final_loss")
    if _final(o) == best and math.isfinite(best):
      final = f"**{final}**"
    cells = [f"`{name}`", final, last10, run_mean]
    for m in extras:
      if m.endswith("accuracy") and o.get(f"{m}_mean") is not None:
        cells.append(f"{100 * o[f'{m}_mean']:.1f}%")
      else:
        cells.append(_mean_sem(o, m))
    cells.append(_learned_cell(o))
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _validation(history: dict) -> str | None:
  steps, losses = history.get("valid_step") or [], history.get("valid_loss") or []
  pairs = [(loss, step) for step, loss in zip(steps, losses)
           if loss is not None and math.isfinite(loss)]
  if not pairs:
    return None
  loss, step = min(pairs)
  text = f"best validation score {_num(loss)} at meta-step {step} ({len(pairs)} validations)"
  if history.get("stage_start"):
    stages = ", ".join(map(str, history["stage_start"]))
    text += f"; curriculum stages started at meta-steps {stages}"
  if history.get("restored_at"):
    text += f"; best φ restored at meta-step(s) {', '.join(map(str, history['restored_at']))}"
  if history.get("num_skipped"):
    text += f"; {history['num_skipped']} non-finite meta-steps skipped"
  return text


def facts_line(key: str, path: pathlib.Path, root: pathlib.Path, s: dict) -> str:
  """Where a summary comes from: file, make target, commit, machine, times."""
  rel = path.relative_to(root).as_posix()
  facts = [f"`{rel}`"]
  if key in MAKE_TARGETS:
    facts.append(f"written by `{MAKE_TARGETS[key]}`")
  facts.append(f"commit `{s['commit'][:7]}`")
  device = s.get("device_kind") or s.get("device", "?")
  facts.append(f"{device}, JAX {s.get('jax_version', '?')}"
               + (f", malloc {s['malloc']}" if s.get("malloc") else ""))
  facts.append(f"meta-training {_seconds(s['meta_train_seconds'])}")
  for name, extra in sorted((s.get("extra_rules") or {}).items()):
    if "meta_train_seconds" in extra:
      facts.append(f"`{name}` {_seconds(extra['meta_train_seconds'])}")
  facts.append(f"evaluation {_seconds(s['eval_seconds'])}")
  return "; ".join(facts) + "."


def experiment_block(key: str, path: pathlib.Path, root: pathlib.Path) -> str:
  s = _load(path)
  lines = [facts_line(key, path, root, s)]
  valid = _validation(s.get("meta_train_history") or {})
  if valid:
    lines += ["", f"Meta-training: {valid}."]
  for note in sorted(k for k in s if k.endswith("_note")):
    lines += ["", f"Note ({note}): {s[note]}"]
  for variant, v in s["variants"].items():
    runs = v["num_test_problems"]
    lines += ["", f"**{variant}** — {v['steps']} steps, {runs} held-out runs", ""]
    lines += variant_table(v)
  curves = path.parent / "curves.png"
  if path.name == "summary.json" and curves.exists():
    lines += ["", f"![{key} loss curves](../{curves.relative_to(root).as_posix()})"]
  return "\n".join(lines) + "\n"


def trials_block(key: str, root: pathlib.Path) -> str:
  t = _load(root / "results" / key / "trials.json")
  tasks = list(t["adam"])
  header = ["candidate", "seed", "meta-steps", "imitation p", "imitation rate", "φ averaging",
            "early stopping on"] + tasks + ["below Adam"]
  lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]

  def order(kv):
    st = kv[1]["settings"]
    return (st["imitation_learning_rate"], st["imitation_max_learning_rate"] or 0,
            st["phi_average"] or 0, st["valid_objective"], st["imitation_prob"],
            st["num_meta_steps"], st["seed"], kv[0])

  for name, c in sorted(t["candidates"].items(), key=order):
    st = c["settings"]
    rate = _g(st["imitation_learning_rate"])
    if st["imitation_max_learning_rate"]:
      rate += f"–{_g(st['imitation_max_learning_rate'])}"
    cells = [f"`{name}`", str(st["seed"]), str(st["num_meta_steps"]), _g(st["imitation_prob"]),
             rate, _g(st["phi_average"]) if st["phi_average"] else "–",
             st["valid_objective"]]
    for task in tasks:
      value = _num(c["final_loss"][task])
      cells.append(f"**{value}**" if task in c["wins_vs_adam"] else value)
    cells.append(f"{len(c['wins_vs_adam'])} of {len(tasks)}")
    lines.append("| " + " | ".join(cells) + " |")
  adam = ["Adam, tuned per task", "", "", "", "", "", ""]
  adam += [f"{_num(t['adam'][k]['final_loss'])} (lr {_g(t['adam'][k]['learning_rate'])})"
           for k in tasks]
  lines.append("| " + " | ".join(adam + [""]) + " |")
  return "\n".join(lines) + "\n"


def results_table(root: pathlib.Path, summaries: dict[str, pathlib.Path]) -> str:
  header = ["experiment", "command", "headline variant", "learned rule", "best tuned baseline",
            "learned rule below the best baseline"]
  lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
  for key, command in MAKE_TARGETS.items():
    if key not in summaries:
      continue
    s = _load(summaries[key])
    won = 0
    for variant, v in s["variants"].items():
      opts = v["optimizers"]
      learned = [n for n in opts if not _is_baseline(n)]
      base = [n for n in opts if _is_baseline(n)]
      rule, best = learned[0], min(base, key=lambda n: (_final(opts[n]), n))
      won += _final(opts[rule]) < _final(opts[best])
      if variant == next(iter(s["variants"])):
        cells = [f"`{variant}` ({v['steps']} steps, {v['num_test_problems']} runs)",
                 f"`{rule}` {_mean_sem(opts[rule], 'final_loss')}",
                 f"`{best}` {_mean_sem(opts[best], 'final_loss')}"]
    page = OWN_PAGES.get(key, f"docs/results.md#{key.replace('_', '-')}")
    lines.append("| " + " | ".join([f"[{key}]({page})", f"`{command}`", *cells,
                                    f"{won} of {len(s['variants'])} variants"]) + " |")
  return "\n".join(lines) + "\n"


def wall_times_block(summaries: dict[str, pathlib.Path]) -> str:
  """Measured meta-training and evaluation time of every make-target run (reruns, seeds and
  trials included; "partial" when its summary has a ``partial_note``), from its summary."""
  lines = ["| command | results | meta-training | evaluation | total | commit "
           "| machine, allocator |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for key, path in summaries.items():
    s = _load(path)
    if s.get("experiment") not in MAKE_TARGETS:
      continue
    train = s["meta_train_seconds"] + sum(e.get("meta_train_seconds", 0)
                                          for e in (s.get("extra_rules") or {}).values())
    lines.append("| " + " | ".join([
        f"`{MAKE_TARGETS[s['experiment']]}`" + (" (partial)" if s.get("partial_note") else ""),
        f"`{key}`", _seconds(train),
        _seconds(s["eval_seconds"]), _seconds(train + s["eval_seconds"]),
        f"`{s['commit'][:7]}`",
        f"{s.get('device_kind') or s.get('device', '?')}, "
        + s.get("malloc", "?").replace("glibc.malloc.", "")]) + " |")
  return "\n".join(lines) + "\n"


def compare_block(keys: list[str], summaries: dict[str, pathlib.Path]) -> str:
  """Final loss of every learned rule of several runs (rows) per variant (columns), in bold
  where below the best tuned baseline of that variant in the first run; that baseline last."""
  for key in keys:
    if key not in summaries:
      raise ReportError(f"compare block: no results/{key}/summary.json")
  runs = {k: _load(summaries[k]) for k in keys}
  first = runs[keys[0]]["variants"]
  variants = list(dict.fromkeys(v for s in runs.values() for v in s["variants"]))
  best = {}
  for variant in variants:
    for s in runs.values():  # the first run that tuned baselines on this variant
      opts = s["variants"].get(variant, {}).get("optimizers", {})
      base = [n for n in opts if _is_baseline(n)]
      if base:
        best[variant] = min((_final(opts[n]), n, opts[n]) for n in base)
        break
  header = ["run", "rule"] + [f"{v} ({(first.get(v) or {}).get('steps', '')} steps)".replace(
      " ( steps)", "") for v in variants]
  lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
  for key, s in runs.items():
    rules = list(dict.fromkeys(n for v in s["variants"].values() for n in v["optimizers"]
                               if not _is_baseline(n)))
    for rule in rules:
      cells = [f"`{key}`", f"`{rule}`"]
      for variant in variants:
        o = s["variants"].get(variant, {}).get("optimizers", {}).get(rule)
        if o is None:
          cells.append("")
          continue
        text = _mean_sem(o, "final_loss")
        below = variant in best and _final(o) < best[variant][0]
        cells.append(f"**{text}**" if below else text)
      lines.append("| " + " | ".join(cells) + " |")
  cells = ["best tuned baseline", ""]
  for variant in variants:
    cells.append(f"`{best[variant][1]}` {_mean_sem(best[variant][2], 'final_loss')}"
                 if variant in best else "")
  lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
