"""Meta-training on 2 processes (jax.distributed, CPU collectives over gloo) on localhost.

One quadratic meta-training (global batch 8, 20 meta-steps) is run by one process in
this test's process and by 2 processes started with ``python -m metaopt.launch``; then
one of 2 processes is killed mid-run and both are restarted with ``resume=True``.
Every subprocess has a hard timeout.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from metaopt import distributed, launch
from metaopt.meta_step import prepare, shard_over_devices

ROOT = pathlib.Path(__file__).resolve().parents[1]

SETUP = textwrap.dedent("""
    from metaopt import MetaTrainConfig, Truncation, Validation
    from metaopt.networks import LSTMConfig
    from metaopt.problems import QuadraticFamily

    def setup():
      cfg = MetaTrainConfig(truncation=Truncation(horizon=10, unroll_length=5), batch_size=8,
                            num_meta_steps=20, meta_learning_rate=3e-3,
                            validation=Validation(every=10, num_problems=8))
      return QuadraticFamily(dim=5), LSTMConfig((8,)), cfg
""")

# argv: out.npz, checkpoint folder, resume (0/1), meta-step after whose checkpoint process 1
# kills itself (0: never).
WORKER = SETUP + textwrap.dedent("""
    import os, signal, sys
    import jax, numpy as np
    from metaopt import meta_train, train_checkpoint

    out, folder, resume, die_at = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    if die_at and jax.process_index() == 1:
      save = train_checkpoint.TrainCheckpointer.save

      def save_then_die(self, step, tree, info):
        path = save(self, step, tree, info)
        if step >= die_at:
          print(f"process 1 dies after the checkpoint of meta-step {step}", flush=True)
          os.kill(os.getpid(), signal.SIGKILL)
        return path
      train_checkpoint.TrainCheckpointer.save = save_then_die
    family, config, cfg = setup()
    result = meta_train(family, config, cfg, checkpoint_dir=folder, checkpoint_every=4,
                        resume=resume, progress=False)
    if jax.process_index() == 0:
      leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
      np.savez(out, *leaves(result.final_phi), *leaves(result.phi),
               meta_loss=np.asarray(result.history.meta_loss),
               valid_loss=np.asarray(result.history.valid_loss))
    print("WORKER-DONE", jax.process_index(), flush=True)
""")


# The runs share compiled programs through the session's compilation cache (conftest.py), here
# every program however fast it compiles.
CACHE = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **CACHE, **extra)


def _flat(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  path = tmp_path_factory.mktemp("distributed")
  (path / "worker.py").write_text(WORKER)
  return path


def _launch(work, name, resume=False, timeout=150):
  """The worker on 2 local processes via metaopt.launch; its output and result file."""
  out = work / f"{name}.npz"
  cmd = [sys.executable, "-m", "metaopt.launch", "--processes", "2", "--grace", "20",
         "--timeout", str(timeout - 20), "--log-dir", str(work / f"logs_{name}"),
         str(work / "worker.py"), str(out), str(work / "ckpt"), str(int(resume)), "0"]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc, out


@pytest.fixture(scope="module")
def two_processes(work):
  start = time.perf_counter()
  proc, out = _launch(work, "uninterrupted")
  return np.load(out), time.perf_counter() - start, proc


@pytest.fixture(scope="module")
def one_process():
  namespace = {}
  exec(SETUP, namespace)
  family, config, cfg = namespace["setup"]()
  from metaopt import meta_train
  result = meta_train(family, config, cfg, progress=False)
  return result


def test_two_processes_meta_train_like_one(two_processes, one_process):
  files, seconds, proc = two_processes
  print(f"2 processes: {seconds:.1f} s wall")
  n = len(jax.tree.leaves(one_process.final_phi))
  theirs = [files[f"arr_{i}"] for i in range(2 * n)]
  ours = _flat(one_process.final_phi) + _flat(one_process.phi)
  # Same problems, same runs (drawn bit for bit alike: the test below), but not the same sums:
  # the 2 processes sum the batch's meta-loss and meta-gradient as 2 partial sums of 4 runs,
  # one process as one sum of 8, so the last bits differ (measured: meta-losses and phi within
  # 4e-7 and 4e-6 relative after 20 meta-steps, a few float32 ulps carried through Adam).
  np.testing.assert_allclose(files["meta_loss"], one_process.history.meta_loss, rtol=1e-5)
  np.testing.assert_allclose(files["valid_loss"], one_process.history.valid_loss, rtol=1e-5)
  for a, b in zip(theirs, ours):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  # Logging on process 0 only: process 1's log has no progress or checkpoint lines.
  log = (pathlib.Path(proc.args[proc.args.index("--log-dir") + 1]) / "process_1.log").read_text()
  assert "WORKER-DONE 1" in log and "meta-train" not in log and "moved" not in log


def test_killed_process_stops_the_other_and_resume_gives_the_same_phi(work, two_processes):
  files, _, _ = two_processes
  port = launch.free_port()
  procs = []
  folder = work / "ckpt_fault"
  for i in range(2):
    env = _env(**{distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
                  "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",
                  distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_PROCESS_ID: str(i),
                  distributed.ENV_HEARTBEAT: "10"})
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "metaopt.launch", str(work / "worker.py"),
         str(work / "fault.npz"), str(folder), "0", "12"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  try:
    procs[1].wait(timeout=120)
    died = time.monotonic()
    assert procs[1].returncode == -signal.SIGKILL, procs[1].stdout.read()[-3000:]
    procs[0].wait(timeout=60)
    survivor_seconds = time.monotonic() - died
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  out0 = procs[0].stdout.read()
  print(f"the survivor stopped {survivor_seconds:.1f} s after process 1 died")
  assert procs[0].returncode != 0 and survivor_seconds < 60, out0[-3000:]
  assert "WORKER-DONE" not in out0
  assert (folder / "step_000000012").is_dir()
  # Both restarted: the run ends with the uninterrupted 2-process run's phi, bit for bit.
  proc, out = _launch_resume(work, folder)
  resumed = np.load(out)
  assert "resumed from meta-step 12" in proc.stderr
  for i in range(len([k for k in files.files if k.startswith("arr_")])):
    np.testing.assert_array_equal(resumed[f"arr_{i}"], files[f"arr_{i}"])
  np.testing.assert_array_equal(resumed["meta_loss"], files["meta_loss"])


def _launch_resume(work, folder, timeout=150):
  out = work / "resumed.npz"
  cmd = [sys.executable, "-m", "metaopt.launch", "--processes", "2", "--grace", "20",
         "--timeout", str(timeout - 20), "--log-dir", str(work / "logs_resumed"),
         str(work / "worker.py"), str(out), str(folder), "1", "0"]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc, out


def test_launcher_parses_its_options_and_the_programs():
  args = launch.parse(["--processes", "2", "--pin-cpus", "-m", "experiments.quadratic",
                       "--quick", "--seed", "1"])
  assert (args.processes, args.pin_cpus) == (2, True)
  assert args.target == ["-m", "experiments.quadratic"] and args.args == ["--quick", "--seed",
                                                                          "1"]
  args = launch.parse(["script.py", "-m", "x"])
  assert args.processes is None and args.target == ["script.py"] and args.args == ["-m", "x"]
  with pytest.raises(SystemExit):
    launch.parse(["--processes", "2"])


def test_one_process_helpers_and_placement_leave_one_device_alone():
  assert distributed.is_main_process() and distributed.any_process(True)
  assert not distributed.any_process(False)
  x = jax.numpy.arange(4.0)
  np.testing.assert_array_equal(distributed.to_host(x), np.arange(4.0))
  assert distributed.local_copy({"x": x})["x"] is x
  namespace = {}
  exec(SETUP, namespace)
  family, config, cfg = namespace["setup"]()
  state = prepare(family, config, cfg).state
  placement = distributed.Placement(jax.devices()[:1])
  assert placement.mesh is None and placement.place(state) is state
  assert shard_over_devices(state, jax.devices()[:1]) is state


def test_runs_are_drawn_split_like_one_device():
  """On 2 devices: runs drawn a slice per device (as across processes) equal unsplit draws."""
  script = SETUP + textwrap.dedent("""
      import jax, numpy as np
      from jax.sharding import PartitionSpec
      from metaopt.distributed import Placement
      from metaopt.meta_step import prepare
      family, config, cfg = setup()
      est, _, state, _ = prepare(family, config, cfg)
      placement = Placement()
      placed = prepare(family, config, cfg, placement=placement).state
      assert placed.runs.states.params.sharding.spec == PartitionSpec("runs")
      key = jax.random.key(3)
      draw = Placement(split_draws=True).split_outputs(est.start_runs)  # as across processes
      split = draw(placement.put(state.phi), family, placement.put(key))
      plain = jax.jit(est.start_runs)(state.phi, family, key)
      assert len(split.tasks.w.sharding.device_set) == 2
      # Each device computes only its 4 of the 8 problems, with no communication.
      leaves, treedef = jax.tree.flatten(jax.eval_shape(est.start_runs, state.phi, family, key))
      out = treedef.unflatten([placement.sharding(x) for x in leaves])
      hlo = jax.jit(est.start_runs, out_shardings=out).lower(
          placement.put(state.phi), family, placement.put(key)).compile().as_text()
      assert "f32[4,5,5]" in hlo and "f32[8,5,5]" not in hlo
      assert not any(op in hlo for op in ("all-gather", "all-reduce", "collective-permute"))
      for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(plain)):
        a = jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a
        b = jax.random.key_data(b) if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key) else b
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      print("SPLIT-OK", flush=True)
  """)
  env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert "SPLIT-OK" in proc.stdout, proc.stderr[-3000:]
