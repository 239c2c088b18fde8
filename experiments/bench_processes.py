"""``make bench``'s multi-process row: the meta-step with its problems on 1 and on 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROCESSES_WORKER = """
import json, statistics, sys, time
import jax
from metaopt.config import MetaTrainConfig
from metaopt.distributed import Placement
from metaopt.meta_step import prepare
from metaopt.networks import LSTMConfig
from metaopt.problems import QuadraticFamily
from metaopt.truncation import Truncation
reps, batch = int(sys.argv[1]), int(sys.argv[2])
family = QuadraticFamily()
cfg = MetaTrainConfig(truncation=Truncation(horizon=100, unroll_length=20), batch_size=batch)
_, _, state, step = prepare(family, LSTMConfig(), cfg, placement=Placement())
times = []
for i in range(reps + 1):
  t = time.perf_counter()
  state, metrics = step(family, state)
  jax.block_until_ready((state, metrics))
  times.append(time.perf_counter() - t)
if jax.process_index() == 0:
  print("BENCH-PROCESSES " + json.dumps({"processes": jax.process_count(),
        "devices": jax.device_count(), "seconds": statistics.median(times[1:]),
        "first_call_seconds": times[0], "meta_loss": float(metrics["meta_loss"])}), flush=True)
"""


def bench_processes(reps: int, batch_size: int = 128) -> dict:
  """The quadratic meta-step (unroll 20) with its problems on 1 and on 2 local processes.

  Each process is started by ``python -m metaopt.launch --processes N --pin-cpus`` on one
  core with one CPU device (collectives over gloo on the loopback); the global batch
  stays ``batch_size``. Seconds are the median over ``reps`` meta-steps of process 0
  after the first (compiling) call.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = {"problem": "quadratic", "batch_size": batch_size, "unroll": 20}
  for n in (1, 2):
    proc = subprocess.run(
        [sys.executable, "-m", "metaopt.launch", "--processes", str(n), "--pin-cpus",
         "--timeout", "600", "-c", PROCESSES_WORKER, str(reps), str(batch_size)],
        env=env, capture_output=True, text=True, timeout=660)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-PROCESSES ")]
    if proc.returncode or not lines:
      raise RuntimeError(f"bench_processes: {n} processes failed: {proc.stderr[-2000:]}")
    out[f"processes_{n}"] = json.loads(lines[-1].split(" ", 1)[1])
  out["speedup"] = out["processes_1"]["seconds"] / out["processes_2"]["seconds"]
  return out
