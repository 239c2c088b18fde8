"""``make bench``: how fast metaopt meta-trains and how cheaply the learned rule runs.

Writes ``results/bench/bench.json`` (``--out`` to change) and prints a table. Every
time is a median over repetitions after warm-up, with ``block_until_ready``. Each
meta-step and learned-rule row's ``fraction_of_matmul`` divides its FLOP rate by the
rate of a 2048^2 f32 matmul whose calls alternate with the row's (``matmul_flop_rate``
of the row); the top-level ``matmul_flop_rate`` is the same product timed at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import metaopt
from experiments.bench_processes import bench_processes
from metaopt.config import MetaTrainConfig
from metaopt.evaluate import git_commit, malloc_description
from metaopt.meta_step import prepare
from metaopt.mlp_rule import MLPRuleConfig
from metaopt.networks import LSTMConfig
from metaopt.problems import MLPFamily, QuadraticFamily
from metaopt.truncation import Truncation


def _alternated_median_seconds(calls, reps: int) -> list[float]:
  """Median seconds of each no-argument call, after a warm-up, the calls alternated per round."""
  for call in calls:
    jax.block_until_ready(call())  # warm-up
  times = [[] for _ in calls]
  for _ in range(reps):
    for call, call_times in zip(calls, times):
      t = time.perf_counter()
      jax.block_until_ready(call())
      call_times.append(time.perf_counter() - t)
  return [statistics.median(call_times) for call_times in times]


def _median_seconds(fn, *args, reps: int) -> float:
  return _alternated_median_seconds([lambda: fn(*args)], reps)[0]


def _matmul_call(n: int, precision=None):
  """A jitted dense f32 n x n product as a no-argument call."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  b = jax.random.normal(jax.random.key(1), (n, n))
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
  return lambda: matmul(a, b)


def matmul_flop_rate(n: int = 2048, reps: int = 10, precision=None) -> float:
  """FLOP/s of a dense f32 n x n matrix product on the default device.

  ``precision=None`` is JAX's default, the one the meta-step's own products use
  (on recent NVIDIA GPUs that may run f32 products on TF32 tensor cores);
  ``jax.lax.Precision.HIGHEST`` asks for full f32.
  """
  return 2 * n ** 3 / _median_seconds(_matmul_call(n, precision), reps=reps)


def _median_seconds_beside_matmul(fn, reps: int, matmul_size: int) -> tuple[float, float]:
  """Median seconds of ``fn()`` and the matmul FLOP rate, their calls alternated.

  On a shared machine the speed of the cores drifts within seconds (slow phases of a
  few seconds halved the MNIST meta-step but not the matmul); alternating the two
  and taking medians over ``reps`` pairs puts both under the same conditions.
  """
  matmul_seconds, seconds = _alternated_median_seconds([_matmul_call(matmul_size), fn], reps)
  return seconds, 2 * matmul_size ** 3 / matmul_seconds


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def lstm_flops_per_coordinate_step(config: LSTMConfig) -> int:
  """Analytic multiply-add FLOPs of one forward LSTM step for one coordinate."""
  n_in = 1 if config.preprocessing == "none" else 2
  flops = 0
  for h in config.hidden_sizes:
    flops += 2 * (n_in + h) * 4 * h
    n_in = h
  return flops + 2 * n_in


def mnist_problem() -> tuple[MLPFamily, LSTMConfig]:
  """The bench's MNIST meta-step problem: the paper's base net and its LSTM settings."""
  return (MLPFamily.from_dataset(metaopt.data.load_dataset("mnist"), init_scale=0.01),
          LSTMConfig(preprocessing="log_sign", output_scale=0.1))


def bench_meta_step(name, family, config, batch_size, unroll, reps, matmul_size) -> dict:
  """Seconds per meta-step, compile time, FLOPs (cost analysis x trip count) and FLOP rate.

  The fraction of the matmul rate uses a matmul timed alternately with the meta-step
  (``matmul_flop_rate`` of the row).
  """
  cfg = MetaTrainConfig(truncation=Truncation(horizon=unroll * 5, unroll_length=unroll),
                        batch_size=batch_size)
  _, _, state, step = prepare(family, config, cfg)
  t = time.perf_counter()
  compiled = step.lower(family, state).compile()
  compile_seconds = time.perf_counter() - t
  seconds, matmul_rate = _median_seconds_beside_matmul(lambda: compiled(family, state), reps,
                                                       matmul_size)
  # XLA counts a while-loop body once: the scan body runs `unroll` times.
  loop_flops = _flops(compiled)
  coords = sum(x.size for x in jax.tree.leaves(state.runs.states.params)) // batch_size
  analytic = 3 * lstm_flops_per_coordinate_step(config) * coords * batch_size * unroll
  flops = max(loop_flops * unroll, analytic)
  return {
      "problem": name, "batch_size": batch_size, "unroll": unroll, "coordinates": coords,
      "seconds": seconds, "compile_seconds": compile_seconds,
      "coord_steps_per_second": coords * batch_size * unroll / seconds,
      "flops": flops, "flops_cost_analysis_x_trips": loop_flops * unroll,
      "flops_analytic_lstm_fwd_bwd": analytic,
      "flop_rate": flops / seconds, "matmul_flop_rate": matmul_rate,
      "fraction_of_matmul": flops / seconds / matmul_rate,
  }


def _carried_call(update, grads, state, *args):
  """``update(grads, state, *args)`` as a no-argument call that carries the state to the next."""
  carried = [state]

  def call():
    _, carried[0] = update(grads, carried[0], *args)
    return carried[0]
  return call


def mlp_flops_per_coordinate_step(config: MLPRuleConfig) -> int:
  """Analytic multiply-add FLOPs of one MLP-rule forward step for one coordinate."""
  flops, n_in = 0, config.num_features
  for h in config.hidden_sizes:
    flops += 2 * n_in * h
    n_in = h
  return flops + 2 * n_in * 2


RULES = {"lstm": LSTMConfig(), "mlp": MLPRuleConfig()}


def bench_rule_step(num_params: int, reps: int, matmul_size: int, rule: str = "lstm") -> dict:
  """One jitted learned-rule update vs optax.adam on ``num_params`` f32 parameters.

  ``rule``: ``"lstm"`` (the paper's, default config) or ``"mlp"`` (the default
  :class:`metaopt.MLPRuleConfig`). ``seconds`` / ``adam_seconds``: the state carried and
  donated (``donate_argnums``), as a training loop's jitted step runs it, so XLA updates it in
  place; ``adam_ratio`` is their quotient; ``*_without_donation``: a fresh state buffer every
  call (at 10^7 parameters the LSTM's state is 3.2 GB). The rule's ``seconds`` alternate with
  a matmul (``matmul_flop_rate`` of the row). Every update gets the params (the MLP reads them).
  """
  config = RULES[rule]
  phi = metaopt.init_meta_params(config, jax.random.key(0))
  params = {"w": jax.random.normal(jax.random.key(2), (num_params,), jnp.float32)}
  grads = {"w": jax.random.normal(jax.random.key(1), (num_params,))}
  out = {"rule": rule, "num_params": num_params}
  for name, opt in (("seconds", metaopt.learned_rule(phi, config)),
                    ("adam_seconds", optax.adam(1e-3))):
    out[f"{name}_without_donation"] = _median_seconds(jax.jit(opt.update), grads,
                                                      opt.init(params), params, reps=reps)
    call = _carried_call(jax.jit(opt.update, donate_argnums=1), grads, opt.init(params), params)
    if name == "seconds":
      out[name], out["matmul_flop_rate"] = _median_seconds_beside_matmul(call, reps, matmul_size)
    else:
      out[name] = _median_seconds(call, reps=reps)
  per_coordinate = (lstm_flops_per_coordinate_step(config) if rule == "lstm"
                    else mlp_flops_per_coordinate_step(config))
  flops = per_coordinate * num_params
  out.update(ns_per_param=out["seconds"] / num_params * 1e9,
             adam_ratio=out["seconds"] / out["adam_seconds"], flops=flops,
             fraction_of_matmul=flops / out["seconds"] / out["matmul_flop_rate"])
  return out


def bench_memory(name, family, config, unroll, reps: int = 3) -> list[dict]:
  """Compiled meta-step memory (XLA memory analysis) and seconds, without and with remat.

  The two meta-steps' calls alternate (median of ``reps`` each), so the stated
  slowdown from rematerialization compares them under the same conditions.
  """
  rows, calls = [], []
  for remat in (False, True):
    cfg = MetaTrainConfig(truncation=Truncation(horizon=unroll, unroll_length=unroll),
                          batch_size=1, remat=remat)
    _, _, state, step = prepare(family, config, cfg)
    compiled = step.lower(family, state).compile()
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", 0))
    args = int(getattr(mem, "argument_size_in_bytes", 0))
    out = int(getattr(mem, "output_size_in_bytes", 0))
    rows.append({"problem": name, "unroll": unroll, "remat": remat, "bytes": temp + args + out,
                 "temp_bytes": temp})
    calls.append(lambda compiled=compiled, state=state: compiled(family, state))
  seconds = _alternated_median_seconds(calls, reps)
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's peak
  return [{**row, "seconds": s, "peak_rss_bytes": peak_rss} for row, s in zip(rows, seconds)]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default="results/bench/bench.json")
  parser.add_argument("--quick", action="store_true",
                      default=os.environ.get("QUICK", "") not in ("", "0"))
  parser.add_argument("--max-params", type=int, default=10 ** 7)
  parser.add_argument("--mnist-batch-sizes", default="1",
                      help="comma-separated problems per MNIST meta-step; sizes other than 1 are "
                           "recorded as mnist_batch<N> (an accelerator is idle at 1)")
  args = parser.parse_args(argv)
  reps = 3 if args.quick else 7
  device = jax.devices()[0]
  matmul_size = 1024 if args.quick else 2048
  rate = matmul_flop_rate(matmul_size)
  rate_highest = matmul_flop_rate(matmul_size, precision=jax.lax.Precision.HIGHEST)
  malloc = malloc_description()
  print(f"device {device.platform} ({device.device_kind}), malloc {malloc}, "
        f"matmul {rate / 1e9:.1f} GFLOP/s (precision HIGHEST: {rate_highest / 1e9:.1f})")

  result = {"device": f"{device.platform}:{device.device_kind}", "jax_version": jax.__version__,
            "commit": git_commit(), "cpu_count": os.cpu_count(), "malloc": malloc,
            "matmul_flop_rate": rate, "matmul_flop_rate_precision_highest": rate_highest,
            "meta_step": {}, "rule_step": [], "memory": []}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  save = lambda: out.write_text(json.dumps(result, indent=1) + "\n")  # after every row

  problems = {"quadratic": (QuadraticFamily(), LSTMConfig(), 128)}
  try:
    mnist = mnist_problem()
    for b in (int(x) for x in args.mnist_batch_sizes.split(",")):
      problems["mnist" if b == 1 else f"mnist_batch{b}"] = (*mnist, b)
  except Exception as e:  # no data: the MNIST rows are skipped and say why
    print(f"MNIST skipped: {e}")
  for name, (family, config, batch) in problems.items():
    m = result["meta_step"][name] = bench_meta_step(name, family, config, batch, 20,
                                                    3 * reps, matmul_size)
    save()
    print(f"meta-step {name:<13} {m['seconds'] * 1e3:8.1f} ms  "
          f"compile {m['compile_seconds']:.1f} s  "
          f"{m['coord_steps_per_second'] / 1e6:.2f} M coord-steps/s  "
          f"{m['flop_rate'] / 1e9:.1f} GFLOP/s = {100 * m['fraction_of_matmul']:.1f}% of matmul "
          f"({m['matmul_flop_rate'] / 1e9:.1f} GFLOP/s beside it)")

  n = 1000
  while n <= (min(args.max_params, 10 ** 5) if args.quick else args.max_params):
    for rule in RULES:
      r = bench_rule_step(n, reps, matmul_size, rule)
      result["rule_step"].append(r)
      save()
      print(f"rule step {rule:<4} {n:>9} params  {r['seconds'] * 1e3:9.3f} ms  "
            f"({r['ns_per_param']:.2f} ns/param, "
            f"{100 * r['fraction_of_matmul']:.1f}% of matmul; without donation "
            f"{r['seconds_without_donation'] * 1e3:.3f} ms)  adam {r['adam_seconds'] * 1e3:.3f} ms"
            f" ({r['adam_ratio']:.1f}x)")
    n *= 10

  family, config, _ = problems.get("mnist", problems["quadratic"])
  mem_name = "mnist" if "mnist" in problems else "quadratic"
  for unroll in ((10, 20) if args.quick else (10, 20, 50, 100)):
    for m in bench_memory(mem_name, family, config, unroll, 1 if args.quick else 5):
      result["memory"].append(m)
      save()
      print(f"memory {mem_name} unroll {unroll:>3} remat {m['remat']!s:<5} "
            f"{m['bytes'] / 2 ** 20:8.1f} MiB  "
            f"({m['seconds']:.2f} s/meta-step)")
  p = result["processes"] = bench_processes(5 if args.quick else 3 * reps,
                                            16 if args.quick else 128)
  save()
  print(f"meta-step quadratic, {p['batch_size']} problems on 1 / 2 processes (one core each): "
        f"{p['processes_1']['seconds'] * 1e3:.1f} / {p['processes_2']['seconds'] * 1e3:.1f} ms "
        f"({p['speedup']:.2f}x)")
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
