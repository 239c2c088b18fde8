"""``make profile``: where ``make bench``'s MNIST meta-step spends its time, per kind of XLA op.

Traces a few calls of the compiled meta-step with ``jax.profiler``, sums each XLA op's
duration from the trace, and groups the ops by what their HLO does (matrix products,
gate nonlinearities, scan residual slices, layout copies, reductions, other elementwise
work). Op times are summed over the CPU's threads, so they can exceed the wall time.
Writes ``results/bench/profile.json``; docs/performance.md shows it as a table.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile
import time

import jax

from experiments.bench import mnist_problem
from metaopt.config import MetaTrainConfig
from metaopt.evaluate import git_commit, malloc_description
from metaopt.meta_step import prepare
from metaopt.truncation import Truncation

# Checked in this order: an op is in the first category whose HLO opcodes it contains.
CATEGORIES = (
    ("matrix products", ("dot", "convolution")),
    ("gate nonlinearities (tanh, logistic)", ("tanh", "logistic")),
    ("scan residuals (dynamic slices)", ("dynamic-update-slice", "dynamic-slice")),
    ("layout copies and transposes", ("copy", "transpose")),
    ("reductions", ("reduce", "reduce-window")),
)
OTHER = "other elementwise"
CONTROL = {"while", "conditional", "call", "parameter", "tuple", "get-tuple-element",
           "constant", "bitcast"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][a-z\-]*)\((.*)$")


def op_categories(hlo_text: str) -> dict[str, str]:
  """Each top-level instruction's category (fusions by the opcodes of their computation).

  Example:
    >>> op_categories(jax.jit(f).lower(x).compile().as_text())["dot.3"]
    'matrix products'
  """
  ops_of, calls_of, opcode_of, home, current = collections.defaultdict(set), {}, {}, {}, None
  for line in hlo_text.splitlines():
    if line[:1] not in ("", " ") and line.rstrip().endswith("{"):  # a computation's header
      current = line.removeprefix("ENTRY ").split()[0].lstrip("%")
      continue
    if current is None or not (m := _INSTRUCTION.match(line)):
      continue
    name, opcode, rest = m.groups()
    ops_of[current].add(opcode)
    opcode_of[name], home[name] = opcode, current
    if opcode == "fusion" and (c := re.search(r"calls=%?([\w.\-]+)", rest)):
      calls_of[name] = c.group(1)
  fused = set(calls_of.values())
  out = {}
  for name, opcode in opcode_of.items():
    if opcode in CONTROL or home[name] in fused:  # the ops inside a fusion run as the fusion
      continue
    ops = ops_of.get(calls_of[name], set()) if name in calls_of else {opcode}
    out[name] = next((cat for cat, codes in CATEGORIES if ops & set(codes)), OTHER)
  return out


def op_seconds(trace_dir: pathlib.Path, module: str) -> dict[str, float]:
  """Summed seconds of each XLA op of ``module`` in a ``jax.profiler`` trace folder."""
  path = next(trace_dir.rglob("*.trace.json.gz"))
  events = json.loads(gzip.open(path).read())["traceEvents"]
  out = collections.Counter()
  for e in events:
    args = e.get("args", {})
    if e.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
      out[args["hlo_op"]] += e["dur"] * 1e-6
  return dict(out)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--calls", type=int, default=5)
  parser.add_argument("--out", default="results/bench/profile.json")
  args = parser.parse_args(argv)
  family, config = mnist_problem()
  cfg = MetaTrainConfig(truncation=Truncation(horizon=100, unroll_length=20), batch_size=1)
  _, _, state, step = prepare(family, config, cfg)
  compiled = step.lower(family, state).compile()
  for _ in range(3):
    jax.block_until_ready(compiled(family, state))
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      start = time.perf_counter()
      for _ in range(args.calls):
        jax.block_until_ready(compiled(family, state))
      wall = (time.perf_counter() - start) / args.calls
    module = re.search(r"HloModule ([\w.\-]+)", compiled.as_text()).group(1)
    seconds = op_seconds(pathlib.Path(tmp), module)
  categories = op_categories(compiled.as_text())
  by_category = collections.Counter()
  for op, s in seconds.items():
    if op in categories:
      by_category[categories[op]] += s / args.calls
  top = sorted(((s / args.calls, op) for op, s in seconds.items() if op in categories),
               reverse=True)[:15]
  result = {"commit": git_commit(), "malloc": malloc_description(), "calls": args.calls,
            "problem": "mnist", "unroll": 20, "wall_seconds_per_call": wall,
            "op_seconds_per_call": dict(by_category.most_common()),
            "top_ops": [{"op": op, "category": categories[op], "seconds_per_call": s}
                        for s, op in top]}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  total = sum(by_category.values())
  print(f"MNIST meta-step: {wall * 1e3:.1f} ms wall per call, {total * 1e3:.1f} ms of op time")
  for cat, s in by_category.most_common():
    print(f"  {cat:<40} {s * 1e3:7.1f} ms  {100 * s / total:5.1f}%")
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
