"""Regenerates the result tables in README.md and docs/ (results, performance, suite).

``python -m experiments.report`` rewrites every generated block from the committed results
(``results/**/summary.json``, ``results/**/*_summary.json``, ``results/h100/generalize_trials/
trials.json``, ``results/bench/*.json``) into README.md, docs/results.md, docs/performance.md and
docs/suite.md; ``--check`` writes nothing and exits 1, naming each file
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
- ``suite:KEY`` (docs/suite.md): the task-suite scores and per-task table of
  ``results/KEY/summary.json`` (it stands for that summary's experiment block);
- ``suite-trials:KEY,KEY,...`` (docs/suite.md): one row per suite run, its held-out task types'
  lower-mean counts against tuned Adam, untuned and with the multiplier tuned per task;
- ``bench:FILE:TABLE`` (docs/performance.md): ``meta-step``, ``rule-step``, ``memory`` or
  ``malloc`` or ``profile`` of ``results/bench/FILE``;
- ``wall-times`` (docs/performance.md): every make target's measured meta-training and
  evaluation time, from its summary.

Only the standard library and numpy: no JAX import. Output is deterministic (fixed formatting,
optimizers sorted by final loss then name, experiments in file order).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

from experiments.report_bench import bench_block, bench_headline
from experiments.report_results import (
  ReportError,
  _summaries,
  compare_block,
  experiment_block,
  results_table,
  trials_block,
  wall_times_block,
)
from experiments.report_suite import suite_block, trials_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGETS = ("README.md", "docs/results.md", "docs/performance.md", "docs/suite.md")
BLOCK = re.compile(r"(<!-- generated:(\S+) -->\n)(.*?)(<!-- /generated:\2 -->)", re.S)
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
    elif kind == "suite":
      if arg not in summaries:
        raise ReportError(f"block {name}: no results/{arg}/summary.json")
      seen.add(arg)
      body = suite_block(arg, summaries[arg], root)
    elif kind == "suite-trials":
      missing = [k for k in arg.split(",") if k not in summaries]
      if missing:
        raise ReportError(f"block {name}: no results/{missing[0]}/summary.json")
      body = trials_table(arg.split(","), summaries)
    elif kind == "wall-times":
      body = wall_times_block(summaries)
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
