"""Markdown tables of ``make bench``'s JSON files (for :mod:`experiments.report`)."""

from __future__ import annotations

import pathlib

from experiments.report_results import ReportError, _load


def _fraction(x: float) -> str:
  return f"{100 * x:.1f}%"


def _time(seconds: float) -> str:
  if seconds >= 1:
    return f"{seconds:.3g} s"
  return f"{seconds * 1e3:.3g} ms"


def malloc_block(b: dict, name: str) -> str:
  """The allocator comparison of ``make bench-malloc`` (experiments/bench_malloc.py)."""
  lines = [f"`results/bench/{name}`: commit `{b['commit'][:7]}`, {b['cpu_count']} CPUs, "
           f"{b['rounds']} rounds of one process per setting, alternating.", "",
           "| allocator | MNIST meta-step (median of rounds) | per round | of matmul "
           "| minor page faults |", "| --- | --- | --- | --- | --- |"]
  for key, s in b["settings"].items():
    lines.append("| " + " | ".join([
        f"{key}: {s['malloc'].replace('glibc.malloc.', '')}", _time(s["median_seconds"]),
        ", ".join(_time(r["seconds"]) for r in s["runs"]),
        _fraction(s["median_fraction_of_matmul"]),
        f"{s['median_minor_page_faults']:,.0f}"]) + " |")
  return "\n".join(lines) + "\n"


def profile_block(b: dict, name: str) -> str:
  """The per-category op times of ``make profile`` (experiments/profile_meta_step.py)."""
  ops = b["op_seconds_per_call"]
  total = sum(ops.values())
  lines = [f"`results/bench/{name}`: commit `{b['commit'][:7]}`, malloc {b['malloc']}; "
           f"{b['problem']} meta-step, unroll {b['unroll']}, {b['calls']} traced calls: "
           f"{_time(b['wall_seconds_per_call'])} wall per call, {_time(total)} of op time "
           "(summed over threads).", "",
           "| XLA ops | time per meta-step | share of op time |", "| --- | --- | --- |"]
  for cat, s in ops.items():
    lines.append(f"| {cat} | {_time(s)} | {_fraction(s / total)} |")
  return "\n".join(lines) + "\n"


def bench_block(name: str, table: str, root: pathlib.Path) -> str:
  b = _load(root / "results" / "bench" / name)
  if table == "malloc":
    return malloc_block(b, name)
  if table == "profile":
    return profile_block(b, name)
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
    raise ReportError(f"unknown bench table {table!r} "
                      "(meta-step, rule-step, memory, malloc, profile)")
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
          f"{_time(mid[0]['adam_seconds'])})" + _mlp_clause(b) + ".\n")


def _mlp_clause(b: dict) -> str:
  """The MLP rule's optax step at 10^6 parameters, when the bench has it."""
  mlp = [r for r in b["rule_step"] if r.get("rule") == "mlp" and r["num_params"] == 1_000_000]
  if not mlp:
    return ""
  r = mlp[0]
  return (f", the MLP rule's {r['ns_per_param']:.3g} ns "
          f"({r['seconds'] / r['adam_seconds']:.1f}× Adam's)")
