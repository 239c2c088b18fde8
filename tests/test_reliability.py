"""Meta-training that survives being killed, detects corrupt checkpoints and stops on divergence."""

import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt.checkpoint import CorruptCheckpointError, load_meta_params
from metaopt.meta_train import (Checkpointer, MetaTrainConfig, MetaTrainingStopped, init_train_state,
                                 meta_train)
from metaopt.networks import LSTMConfig
from metaopt.problems import QuadraticFamily

CONFIG = LSTMConfig((8,))
TRAIN = dict(horizon=6, unroll_length=2, batch_size=4, num_meta_steps=40, valid_every=7,
             num_valid_problems=4, checkpoint_every=2, meta_learning_rate=1e-2)
# Longer meta-steps for the kill test, so a kill lands while the run is still going.
KILL_TRAIN = {**TRAIN, "batch_size": 256, "num_meta_steps": 120}

SCRIPT = textwrap.dedent("""
    import sys, metaopt
    from metaopt.meta_train import MetaTrainConfig, meta_train
    from metaopt.networks import LSTMConfig
    from metaopt.problems import QuadraticFamily
    import json
    ckpt, out, every, train = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    cfg = MetaTrainConfig(**{**train, "checkpoint_every": every})
    print("started", flush=True)
    r = meta_train(QuadraticFamily(dim=3), LSTMConfig((8,)), cfg, progress=False,
                   checkpoint_dir=ckpt, resume=True)
    metaopt.save_meta_params(out, r.final_phi, LSTMConfig((8,)), {"best": r.best_valid_loss,
                             "history": r.history["meta_loss"]})
    print("finished", flush=True)
""")


def _start(ckpt, out, every=2, train=TRAIN):
  return subprocess.Popen([sys.executable, "-c", SCRIPT, str(ckpt), str(out), str(every),
                           json.dumps(train)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_random_points_then_resume_gives_the_identical_phi(tmp_path):
  # The reference runs in a fresh process too, so both see the same XLA flags.
  ref = _start(tmp_path / "ref_ckpt", tmp_path / "ref.msgpack", train=KILL_TRAIN)
  assert ref.wait(timeout=300) == 0, ref.stderr.read()
  ref_phi, _, ref_meta = load_meta_params(tmp_path / "ref.msgpack")
  ckpt, out = tmp_path / "ckpt", tmp_path / "phi.msgpack"
  rng = random.Random(0)
  kills = 0
  while True:
    proc = _start(ckpt, out, train=KILL_TRAIN)
    seen = {p.name for p in ckpt.glob("*.ckpt")} if ckpt.exists() else set()
    deadline = time.time() + 120
    # Wait for one new checkpoint, then kill at a random moment soon after.
    while proc.poll() is None and time.time() < deadline and kills < 3:
      if ckpt.exists() and {p.name for p in ckpt.glob("*.ckpt")} - seen:
        time.sleep(rng.uniform(0.0, 0.1))
        proc.send_signal(signal.SIGKILL)
        kills += 1
        break
      time.sleep(0.02)
    proc.wait(timeout=120)
    if proc.returncode == 0:
      break
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
  print("kills", kills)
  assert kills >= 2  # (3 unless a resumed run finished before the next kill)
  phi, _, meta = load_meta_params(out)
  jax.tree.map(np.testing.assert_array_equal, phi, ref_phi)
  assert meta["history"] == ref_meta["history"] and meta["best"] == ref_meta["best"]
  assert len(meta["history"]) == KILL_TRAIN["num_meta_steps"]


def test_sigterm_writes_a_checkpoint_before_exit(tmp_path):
  ckpt = tmp_path / "ckpt"
  proc = _start(ckpt, tmp_path / "phi.msgpack", every=10_000)
  assert proc.stdout.readline().strip() == "started"
  time.sleep(4.0)  # let it compile and take some meta-steps
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
  saved = list(ckpt.glob("step_*.ckpt"))
  assert len(saved) == 1 and int(saved[0].stem.split("_")[1]) > 0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, damage, capsys):
  cfg = MetaTrainConfig(**{**TRAIN, "num_meta_steps": 6})
  meta_train(QuadraticFamily(dim=3), CONFIG, cfg, progress=False, checkpoint_dir=tmp_path)
  checkpointer = Checkpointer(tmp_path, CONFIG, cfg)
  newest, previous = checkpointer.paths()
  raw = bytearray(newest.read_bytes())
  if damage == "truncate":
    newest.write_bytes(bytes(raw[: len(raw) // 2]))
  else:
    raw[len(raw) // 2] ^= 0x01
    newest.write_bytes(bytes(raw))
  state = init_train_state(QuadraticFamily(dim=3), CONFIG, cfg)
  tree, loop = checkpointer.restore({"train": state, "best_phi": state.phi})
  assert loop["step"] == int(previous.stem.split("_")[1]) == 4
  assert str(newest) in capsys.readouterr().err
  with pytest.raises(CorruptCheckpointError, match=str(newest)):
    metaopt.checkpoint.load_tree_checkpoint(newest, {"train": state, "best_phi": state.phi})


def test_resumed_run_reports_the_wall_time_of_the_interrupted_run_too(tmp_path):
  fam = QuadraticFamily(dim=3)
  first = meta_train(fam, CONFIG, MetaTrainConfig(**{**TRAIN, "num_meta_steps": 4}),
                     progress=False, checkpoint_dir=tmp_path)
  checkpointer = Checkpointer(tmp_path, CONFIG, MetaTrainConfig(**TRAIN))
  state = init_train_state(fam, CONFIG, MetaTrainConfig(**TRAIN))
  _, loop = checkpointer.restore({"train": state, "best_phi": state.phi})
  assert 0 < loop["seconds"] <= first.seconds
  start = time.perf_counter()
  resumed = meta_train(fam, CONFIG, MetaTrainConfig(**{**TRAIN, "num_meta_steps": 6}),
                       progress=False, checkpoint_dir=tmp_path, resume=True)
  own = time.perf_counter() - start
  assert loop["seconds"] < resumed.seconds <= loop["seconds"] + own


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
  cfg = MetaTrainConfig(**{**TRAIN, "num_meta_steps": 2})
  meta_train(QuadraticFamily(dim=3), CONFIG, cfg, progress=False, checkpoint_dir=tmp_path)
  other = MetaTrainConfig(**{**TRAIN, "num_meta_steps": 4, "meta_learning_rate": 0.5})
  with pytest.raises(ValueError, match="meta_learning_rate: checkpoint has 0.01, this run has 0.5"):
    meta_train(QuadraticFamily(dim=3), CONFIG, other, progress=False, checkpoint_dir=tmp_path,
               resume=True)


class NaNQuadratic(QuadraticFamily):
  def loss(self, params, model_state, task, key):
    value, state = super().loss(params, model_state, task, key)
    return value * jnp.nan, state


def test_too_many_nonfinite_meta_steps_stop_with_the_best_phi_kept():
  cfg = MetaTrainConfig(**{**TRAIN, "max_consecutive_nonfinite": 3})
  with pytest.raises(MetaTrainingStopped, match="3 non-finite meta-losses or meta-gradients in a row") as e:
    meta_train(NaNQuadratic(dim=3), CONFIG, cfg, progress=False)
  result = e.value.result
  assert result.num_skipped == 3 and len(result.history["meta_loss"]) == 3
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(result.phi))


DETERMINISM_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    from metaopt.meta_train import MetaTrainConfig, meta_train
    from metaopt.networks import LSTMConfig
    from metaopt.problems import QuadraticFamily
    r = meta_train(QuadraticFamily(dim=3), LSTMConfig((8,)), MetaTrainConfig(**%r), progress=False)
    leaves = [np.asarray(x) for x in jax.tree.leaves(r.final_phi)]
    np.savez(sys.argv[1], curve=np.array(r.history["meta_loss"]), *leaves)
""" % {**TRAIN, "num_meta_steps": 12})


def test_same_seed_gives_the_same_curve_and_phi_across_processes(tmp_path):
  outs = []
  for i in range(2):
    path = tmp_path / f"run{i}.npz"
    subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(path)], check=True,
                   capture_output=True, timeout=300)
    outs.append(np.load(path))
  assert outs[0].files == outs[1].files
  for name in outs[0].files:
    np.testing.assert_array_equal(outs[0][name], outs[1][name])
