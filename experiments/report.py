"""Regenerates the result tables in README.md, docs/results.md and docs/performance.md.

``python -m experiments.report`` rewrites every generated block from the committed results
(``results/**/summary.json``, ``results/**/*_summary.json``, ``results/h100/generalize_trials/
trials.json``, ``results/bench/*.json``); ``--check`` writes nothing and exits 1, naming each file
that regenerating would change. A generated block is the text between

  <!-- generated:NAME -->
  <!-- /generated:NAME -->

and everything outside the blocks is hand-written prose. Names:

- ``results-table`` (README): one row per make-target experiment, its first variant's learned rule
  against the best tuned baseline, linking to the experiment's section of docs/results.md;
- ``bench-headline`` (README): one sentence from results/bench/bench.json;
- ``experiment:KEY`` (docs/results.md): the tables of ``results/KEY/summary.json`` (or of
  ``results/KEY_summary.json``); every summary must have one block there;
- ``compare:KEY,KEY,...``: the final loss of every learned rule of those runs per variant, against
  the best tuned baseline;
- ``trials:KEY``: the table of ``results/KEY/trials.json``;
- ``bench:FILE:TABLE`` (docs/performance.md): ``meta-step``, ``rule-step`` or ``memory`` of
  ``results/bench/FILE``.

Only the standard library and numpy: no JAX import. Output is deterministic (fixed formatting,
optimizers sorted by final loss then name, experiments in file order).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGETS = ("README.md", "docs/results.md", "docs/performance.md")
BLOCK = re.compile(r"(<!-- generated:(\S+) -->\n)(.*?)(<!-- /generated:\2 -->)", re.S)
# Experiments with a make target, in the order of the README table.
MAKE_TARGETS = {"quadratic": "make quadratic", "mnist": "make mnist",
                "mnist_long": "make mnist-long", "cifar": "make cifar", "art": "make art",
                "generalize": "make generalize",
                "generalize_ablation": "make generalize-ablation"}
BASELINES = ("sgd", "rmsprop", "adam", "nag")


class ReportError(Exception):
  """A generated block names something that is not in results/, or a summary has no block."""


def _num(x: float | None, digits: int = 4) -> str:
  """``digits`` significant digits, fixed notation for everyday magnitudes."""
  if x is None or not math.isfinite(x):
    return "–"
  if x == 0:
    return "0"
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


def experiment_block(key: str, path: pathlib.Path, root: pathlib.Path) -> str:
  s = _load(path)
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
  lines = ["; ".join(facts) + "."]
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


def _fraction(x: float) -> str:
  return f"{100 * x:.1f}%"


def _time(seconds: float) -> str:
  if seconds >= 1:
    return f"{seconds:.3g} s"
  return f"{seconds * 1e3:.3g} ms"


def bench_block(name: str, table: str, root: pathlib.Path) -> str:
  b = _load(root / "results" / "bench" / name)
  head = (f"`results/bench/{name}`: {b['device']}, JAX {b['jax_version']}, commit "
          f"`{b['commit'][:7]}`, {b.get('cpu_count', '?')} CPUs, malloc {b.get('malloc', '?')}; "
          f"2048² f32 matmul {b['matmul_flop_rate'] / 1e9:.1f} GFLOP/s "
          f"({b['matmul_flop_rate_precision_highest'] / 1e9:.1f} at `Precision.HIGHEST`).")
  lines = [head, ""] if table == "meta-step" else []
  if table == "meta-step":
    header = ["meta-step (unroll 20)", "problems", "coordinates each", "time", "compile",
              "coord-steps/s", "FLOP rate", "matmul beside it", "of matmul"]
    lines += ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
    for key, r in b["meta_step"].items():
      beside = r.get("matmul_flop_rate")
      lines.append("| " + " | ".join([
          key, str(r["batch_size"]), str(r["coordinates"]), _time(r["seconds"]),
          f"{r['compile_seconds']:.1f} s", f"{r['coord_steps_per_second'] / 1e6:.3g} M",
          f"{r['flop_rate'] / 1e9:.4g} GFLOP/s",
          f"{beside / 1e9:.1f} GFLOP/s" if beside else "run start",
          _fraction(r["fraction_of_matmul"])]) + " |")
  elif table == "rule-step":
    header = ["learned-rule optax step", "params", "time", "per param", "of matmul",
              "optax.adam", "learned / adam"]
    lines += ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
    for r in b["rule_step"]:
      lines.append("| " + " | ".join([
          r.get("rule", "lstm"), f"{r['num_params']:,}", _time(r["seconds"]),
          f"{r['ns_per_param']:.3g} ns",
          _fraction(r["fraction_of_matmul"]), _time(r["adam_seconds"]),
          f"{r['seconds'] / r['adam_seconds']:.3g}×"]) + " |")
  elif table == "memory":
    header = ["MNIST meta-step, unroll", "memory, no remat", "memory, remat", "time, no remat",
              "time, remat"]
    lines += ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
    rows = {}
    for r in b["memory"]:
      rows.setdefault(r["unroll"], {})[r["remat"]] = r
    for unroll, r in sorted(rows.items()):
      lines.append("| " + " | ".join([
          str(unroll), f"{r[False]['bytes'] / 2**20:.0f} MiB",
          f"{r[True]['bytes'] / 2**20:.0f} MiB",
          _time(r[False]["seconds"]), _time(r[True]["seconds"])]) + " |")
    lo, hi = min(rows), max(rows)
    if 20 in rows:
      lines += ["", f"Unroll {hi} needs {rows[hi][True]['bytes'] / rows[20][True]['bytes']:.2f}× "
                f"the memory of unroll 20 with rematerialization, "
                f"{rows[hi][False]['bytes'] / rows[20][False]['bytes']:.1f}× without "
                f"(unroll {lo}: {rows[lo][False]['bytes'] / 2**20:.0f} MiB without)."]
  else:
    raise ReportError(f"unknown bench table {table!r} (meta-step, rule-step, memory)")
  return "\n".join(lines) + "\n"


def bench_headline(root: pathlib.Path) -> str:
  b = _load(root / "results" / "bench" / "bench.json")
  mnist = b["meta_step"]["mnist"]
  lstm = [r for r in b["rule_step"] if r.get("rule", "lstm") == "lstm"]
  big = max(lstm, key=lambda r: r["num_params"])
  mid = [r for r in lstm if r["num_params"] == 1_000_000] or [big]
  return (f"On the project's {b.get('cpu_count', '?')}-core CPU (`results/bench/bench.json`, "
          f"commit `{b['commit'][:7]}`) one MNIST meta-step (unroll 20, "
          f"{mnist['coordinates']:,} coordinates) takes {_time(mnist['seconds'])}, "
          f"{_fraction(mnist['fraction_of_matmul'])} of the dense-matmul FLOP rate measured beside "
          f"it; the learned rule's optax step costs {mid[0]['ns_per_param']:.3g} ns per parameter "
          f"at {mid[0]['num_params']:,} parameters "
          f"({mid[0]['seconds'] / mid[0]['adam_seconds']:.0f}× `optax.adam`'s "
          f"{_time(mid[0]['adam_seconds'])}).\n")


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
    anchor = key.replace("_", "-")
    lines.append("| " + " | ".join([f"[{key}](docs/results.md#{anchor})", f"`{command}`", *cells,
                                    f"{won} of {len(s['variants'])} variants"]) + " |")
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


def render(root: pathlib.Path = ROOT) -> dict[str, str]:
  """The regenerated text of each target file that exists (path relative to root -> text)."""
  summaries = _summaries(root)
  out, seen = {}, set()

  def fill(match: re.Match) -> str:
    name = match.group(2)
    kind, _, arg = name.partition(":")
    if kind == "results-table":
      body = results_table(root, summaries)
    elif kind == "bench-headline":
      body = bench_headline(root)
    elif kind == "experiment":
      if arg not in summaries:
        raise ReportError(f"block {name}: no results/{arg}/summary.json")
      seen.add(arg)
      body = experiment_block(arg, summaries[arg], root)
    elif kind == "compare":
      body = compare_block(arg.split(","), summaries)
    elif kind == "trials":
      body = trials_block(arg, root)
    elif kind == "bench":
      file, _, table = arg.partition(":")
      body = bench_block(file, table, root)
    else:
      raise ReportError(f"unknown generated block {name!r}")
    return match.group(1) + body + match.group(4)

  for target in TARGETS:
    path = root / target
    if path.exists():
      out[target] = BLOCK.sub(fill, path.read_text())
  missing = sorted(set(summaries) - seen)
  if missing:
    raise ReportError("summaries without an experiment block in docs/results.md: "
                      + ", ".join(f"results/{k}" for k in missing))
  return out


def stale(root: pathlib.Path = ROOT) -> list[str]:
  """Target files whose generated blocks differ from what render() gives."""
  return [t for t, text in render(root).items() if (root / t).read_text() != text]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 naming each stale file")
  args = parser.parse_args(argv)
  try:
    texts = render(ROOT)
  except ReportError as e:
    print(f"experiments.report: {e}", file=sys.stderr)
    return 1
  changed = [t for t, text in texts.items() if (ROOT / t).read_text() != text]
  if args.check:
    for t in changed:
      print(f"stale: {t} (run python -m experiments.report)", file=sys.stderr)
    return 1 if changed else 0
  for t in changed:
    (ROOT / t).write_text(texts[t])
    print(f"wrote {t}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
