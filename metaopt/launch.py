"""Run a metaopt program (an experiment, a script) on several processes with jax.distributed.

Local processes (testing on one machine; on CPU each process has one device and the
processes' collectives use gloo)::

  python -m metaopt.launch --processes 2 -m experiments.quadratic --quick
  python -m metaopt.launch --processes 2 --pin-cpus -c "import metaopt; ..."
  python -m metaopt.launch --processes 4 --one-gpu-each -m experiments.mnist   # 4-GPU host

One process of a cluster job: without ``--processes`` the launcher calls
:func:`metaopt.distributed.initialize`, which finds its peers itself on SLURM, Open
MPI and TPU pod slices, or reads ``METAOPT_COORDINATOR_ADDRESS``,
``METAOPT_NUM_PROCESSES`` and ``METAOPT_PROCESS_ID``; then it runs the program::

  srun --ntasks-per-node=1 python -m metaopt.launch -m experiments.mnist          # SLURM
  gcloud compute tpus tpu-vm ssh NAME --worker=all \\
      --command="cd metaopt && python -m metaopt.launch -m experiments.mnist"      # TPU pod

With ``--processes``, process 0 writes to this terminal and the others to
``<log-dir>/process_<i>.log``. When a process fails, the others get ``--grace``
seconds to stop by themselves (JAX's runtime stops them once a peer is gone),
then are terminated; the launcher exits with the first failure's code and shows
the end of the failed processes' logs. SIGINT/SIGTERM are passed on to the
processes (meta-training checkpoints and stops at the same meta-step on all).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import runpy
import signal
import socket
import subprocess
import sys
import time

from metaopt import distributed


def free_port() -> int:
  """A TCP port free on this machine now (for a local coordinator)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m metaopt.launch", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--processes", type=int, default=None,
                 help="start this many local processes (default: be one process of a job)")
  p.add_argument("--pin-cpus", action="store_true",
                 help="pin local process i to CPU core i (modulo the core count)")
  p.add_argument("--one-gpu-each", action="store_true",
                 help="local process i uses GPU i only (a multi-GPU host)")
  p.add_argument("--grace", type=float, default=90.0,
                 help="seconds the others get to stop after one process failed (default 90)")
  p.add_argument("--timeout", type=float, default=None,
                 help="terminate all processes after this many seconds (default: none)")
  p.add_argument("--log-dir", default=".cache/launch",
                 help="where processes 1.. write their output (default .cache/launch)")
  p.add_argument("--heartbeat-timeout", type=int, default=None,
                 help="seconds without a heartbeat before a process counts as dead "
                      f"(default {distributed.DEFAULT_HEARTBEAT_TIMEOUT})")
  p.add_argument("program", nargs="?", metavar="(-m MODULE | -c CODE | SCRIPT) [ARGS ...]",
                 help="what to run, as with python; ARGS go to the program")
  return p


_VALUED = ("--processes", "--grace", "--timeout", "--log-dir", "--heartbeat-timeout")


def parse(argv: list[str]) -> argparse.Namespace:
  """The launcher's options, and the program (``-m MODULE``, ``-c CODE`` or a script) and its
  arguments, which are everything after it."""
  i = 0
  while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-m", "-c"):
    i += 2 if argv[i] in _VALUED else 1
  parser = _parser()
  args = parser.parse_args(argv[:i])
  if i >= len(argv) or (argv[i] in ("-m", "-c") and i + 1 >= len(argv)):
    parser.error("give the program: -m MODULE, -c CODE or a script, then its arguments")
  if argv[i] in ("-m", "-c"):
    args.target, args.args = argv[i:i + 2], argv[i + 2:]
  else:
    args.target, args.args = argv[i:i + 1], argv[i + 1:]
  return args


def run_program(args) -> None:
  """This process's part of a job: join the others, then run the program as ``__main__``."""
  if args.heartbeat_timeout is not None:
    os.environ[distributed.ENV_HEARTBEAT] = str(args.heartbeat_timeout)
  try:
    distributed.initialize()
  except ValueError as e:
    raise SystemExit(f"metaopt.launch: no peers to join ({e}); start local processes with "
                     f"--processes N, or set {distributed.ENV_COORDINATOR}, "
                     f"{distributed.ENV_NUM_PROCESSES} and {distributed.ENV_PROCESS_ID}") from e
  rest = list(args.args)
  if args.target[0] == "-m":
    sys.argv = [args.target[1], *rest]
    runpy.run_module(args.target[1], run_name="__main__", alter_sys=True)
  elif args.target[0] == "-c":
    sys.argv = ["-c", *rest]
    exec(compile(args.target[1], "<string>", "exec"), {"__name__": "__main__"})
  else:
    sys.argv = [args.target[0], *rest]
    runpy.run_path(args.target[0], run_name="__main__")


def _stop(procs: list[subprocess.Popen], wait_s: float = 10.0) -> None:
  """SIGTERM the processes still running, then SIGKILL those left after ``wait_s``."""
  for proc in procs:
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + wait_s
  for proc in procs:
    try:
      proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _tail(path: pathlib.Path, lines: int = 30) -> str:
  try:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
  except OSError:
    return ""


def launch_local(args) -> int:
  """Start ``args.processes`` local processes of the program and watch them; their exit code."""
  n = args.processes
  if n < 1:
    raise SystemExit(f"metaopt.launch: --processes must be at least 1, got {n}")
  port = free_port()
  log_dir = pathlib.Path(args.log_dir)
  log_dir.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, "-m", "metaopt.launch"]
  if args.heartbeat_timeout is not None:
    command += ["--heartbeat-timeout", str(args.heartbeat_timeout)]
  command += [*args.target, *args.args]
  procs, logs = [], []
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  for i in range(n):
    env = dict(os.environ, **{
        distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
        distributed.ENV_NUM_PROCESSES: str(n), distributed.ENV_PROCESS_ID: str(i),
        "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"})
    if args.one_gpu_each:
      env["JAX_LOCAL_DEVICE_IDS"] = str(i)
    pin = None
    if args.pin_cpus and cpus:
      cpu = cpus[i % len(cpus)]
      pin = lambda cpu=cpu: os.sched_setaffinity(0, {cpu})
    log = None if i == 0 else open(log_dir / f"process_{i}.log", "w")
    logs.append(log_dir / f"process_{i}.log" if i else None)
    procs.append(subprocess.Popen(command, env=env, preexec_fn=pin, stdout=log,
                                  stderr=subprocess.STDOUT if log else None))
    if log is not None:
      log.close()
  if n > 1:
    print(f"metaopt.launch: {n} processes, coordinator 127.0.0.1:{port}; processes 1..{n - 1} "
          f"write to {log_dir}/process_<i>.log", file=sys.stderr)

  forwarded = []
  handler = lambda signum, frame: forwarded.append(signum)
  previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
  start, failed_at, first = time.monotonic(), None, None
  try:
    while any(p.poll() is None for p in procs):
      if forwarded:
        for p in procs:
          if p.poll() is None:
            p.send_signal(forwarded[0])
        forwarded.clear()
      now = time.monotonic()
      if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
        failed_at = now
        first = next(i for i, p in enumerate(procs) if p.returncode not in (None, 0))
      if failed_at is not None and now - failed_at > args.grace:
        print(f"metaopt.launch: processes still running {args.grace:.0f} s after a failure; "
              "terminating them", file=sys.stderr)
        _stop(procs)
      if args.timeout is not None and now - start > args.timeout:
        print(f"metaopt.launch: --timeout {args.timeout:.0f} s reached; terminating",
              file=sys.stderr)
        _stop(procs)
      time.sleep(0.1)
  finally:
    for sig, h in previous.items():
      signal.signal(sig, h)
    _stop(procs)
  codes = [p.returncode for p in procs]
  bad = [i for i, c in enumerate(codes) if c != 0]
  if not bad:
    return 0
  print("metaopt.launch: exit codes " + ", ".join(f"process {i}: {c}" for i, c in
                                                  enumerate(codes)), file=sys.stderr)
  for i in bad:
    if logs[i] is not None:
      print(f"--- end of {logs[i]} ---\n{_tail(logs[i])}", file=sys.stderr)
  code = codes[first if first is not None else bad[0]]
  return code if code > 0 else 128 - code


def main(argv=None) -> int:
  args = parse(sys.argv[1:] if argv is None else list(argv))
  if args.processes is None:
    run_program(args)
    return 0
  return launch_local(args)


if __name__ == "__main__":
  sys.exit(main())
