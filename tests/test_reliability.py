"""Meta-training that survives being killed, detects damaged checkpoints and stops on divergence."""

import dataclasses
import json
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt import MetaTrainConfig, MetaTrainingStopped, Truncation, Validation, meta_train
from metaopt.checkpoint import load_meta_params
from metaopt.networks import LSTMConfig
from metaopt.problems import QuadraticFamily
from metaopt.train_checkpoint import CheckpointError

CONFIG = LSTMConfig((8,))
TRAIN = MetaTrainConfig(truncation=Truncation(horizon=6, unroll_length=2), batch_size=4,
                        num_meta_steps=40, validation=Validation(every=7, num_problems=4),
                        meta_learning_rate=1e-2)
# Longer meta-steps for the kill test, so a kill lands while the run is still going.
KILL_TRAIN = dataclasses.replace(TRAIN, batch_size=256, num_meta_steps=120)
STEP_DIR = re.compile(r"step_\d{9}")

SCRIPT = textwrap.dedent("""
    import json, pathlib, sys
    import metaopt
    from metaopt import MetaTrainConfig, meta_train
    from metaopt.networks import LSTMConfig
    from metaopt.problems import QuadraticFamily
    ckpt, out, every = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    cfg = MetaTrainConfig.from_dict(json.loads(sys.argv[4]))
    print("started", flush=True)
    resume = ckpt.is_dir() and any(p.name.startswith("step_") for p in ckpt.iterdir())
    r = meta_train(QuadraticFamily(dim=3), LSTMConfig((8,)), cfg, progress=False,
                   checkpoint_dir=ckpt, checkpoint_every=every, resume=resume)
    metaopt.save_meta_params(out, r.final_phi, LSTMConfig((8,)), {"best": r.best_valid_loss,
                             "history": r.history.meta_loss})
    print("finished", flush=True)
""")


def _start(ckpt, out, every=2, train=TRAIN):
  return subprocess.Popen([sys.executable, "-c", SCRIPT, str(ckpt), str(out), str(every),
                           json.dumps(train.to_dict())],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saved(ckpt):
  """Names of the complete checkpoints in ``ckpt`` (orbax renames a finished save into place)."""
  return {p.name for p in ckpt.iterdir() if STEP_DIR.fullmatch(p.name)} if ckpt.exists() else set()


def test_sigkill_at_random_points_then_resume_gives_the_identical_phi(tmp_path):
  # The reference runs in a fresh process too, so both see the same XLA flags.
  ref = _start(tmp_path / "ref_ckpt", tmp_path / "ref.msgpack", every=10_000, train=KILL_TRAIN)
  assert ref.wait(timeout=300) == 0, ref.stderr.read()
  ref_phi, _, ref_meta = load_meta_params(tmp_path / "ref.msgpack")
  ckpt, out = tmp_path / "ckpt", tmp_path / "phi.msgpack"
  rng = random.Random(0)
  kills = 0
  while True:
    proc = _start(ckpt, out, train=KILL_TRAIN)
    seen = _saved(ckpt)
    deadline = time.time() + 120
    # Wait for one new checkpoint, then kill at a random moment soon after.
    while proc.poll() is None and time.time() < deadline and kills < 3:
      if _saved(ckpt) - seen:
        time.sleep(rng.uniform(0.0, 0.1))
        proc.send_signal(signal.SIGKILL)
        kills += 1
        break
      time.sleep(0.02)
    proc.wait(timeout=120)
    if proc.returncode == 0:
      break
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
  assert kills >= 2  # (3 unless a resumed run finished before the next kill)
  phi, _, meta = load_meta_params(out)
  jax.tree.map(np.testing.assert_array_equal, phi, ref_phi)
  assert meta["history"] == ref_meta["history"] and meta["best"] == ref_meta["best"]
  assert len(meta["history"]) == KILL_TRAIN.num_meta_steps


def test_sigterm_writes_a_checkpoint_before_exit(tmp_path):
  ckpt = tmp_path / "ckpt"
  endless = dataclasses.replace(TRAIN, num_meta_steps=10 ** 6)  # still running when signalled
  proc = _start(ckpt, tmp_path / "phi.msgpack", every=10 ** 7, train=endless)
  assert proc.stdout.readline().strip() == "started"
  time.sleep(6.0)  # let it compile and take some meta-steps
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
  saved = _saved(ckpt)
  assert len(saved) == 1 and int(saved.pop().split("_")[1]) > 0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_checkpoint_is_named_and_the_previous_one_resumes(tmp_path, damage,
                                                                         capfd):
  fam, cfg = QuadraticFamily(dim=3), dataclasses.replace(TRAIN, num_meta_steps=6)
  meta_train(fam, CONFIG, cfg, progress=False, checkpoint_dir=tmp_path, checkpoint_every=2)
  newest = tmp_path / "step_000000006"
  assert _saved(tmp_path) == {"step_000000004", newest.name}
  largest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(largest.read_bytes())
  if damage == "truncate":
    largest.write_bytes(bytes(raw[: len(raw) // 2]))
  else:
    raw[len(raw) // 2] ^= 0x01
    largest.write_bytes(bytes(raw))
  capfd.readouterr()
  resumed = meta_train(fam, CONFIG, dataclasses.replace(cfg, num_meta_steps=8), progress=False,
                       checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
  err = capfd.readouterr().err
  assert str(newest) in err and "resumed from meta-step 4" in err
  assert len(resumed.history.meta_loss) == 8


def test_resume_without_a_readable_checkpoint_raises(tmp_path):
  with pytest.raises(CheckpointError, match="no readable checkpoint"):
    meta_train(QuadraticFamily(dim=3), CONFIG, TRAIN, progress=False, checkpoint_dir=tmp_path,
               resume=True)


def test_resumed_run_reports_the_wall_time_of_the_interrupted_run_too(tmp_path):
  fam = QuadraticFamily(dim=3)
  first = meta_train(fam, CONFIG, dataclasses.replace(TRAIN, num_meta_steps=4), progress=False,
                     checkpoint_dir=tmp_path, checkpoint_every=2)
  start = time.perf_counter()
  resumed = meta_train(fam, CONFIG, dataclasses.replace(TRAIN, num_meta_steps=6),
                       progress=False, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
  own = time.perf_counter() - start
  assert first.seconds < resumed.seconds <= first.seconds + own


@pytest.mark.parametrize("config, change, message", [
    (CONFIG, dict(meta_learning_rate=0.5),
     "meta_train.meta_learning_rate: checkpoint has 0.01, this run has 0.5"),
    (LSTMConfig((16,)), {}, r"rule.hidden_sizes: checkpoint has \[8\], this run has \[16\]"),
])
def test_checkpoint_from_another_configuration_is_refused_naming_the_fields(
    tmp_path, config, change, message):
  cfg = dataclasses.replace(TRAIN, num_meta_steps=2)
  meta_train(QuadraticFamily(dim=3), CONFIG, cfg, progress=False, checkpoint_dir=tmp_path,
             checkpoint_every=2)
  other = dataclasses.replace(cfg, num_meta_steps=4, **change)
  with pytest.raises(CheckpointError, match=message):
    meta_train(QuadraticFamily(dim=3), config, other, progress=False, checkpoint_dir=tmp_path,
               resume=True)


class NaNQuadratic(QuadraticFamily):
  def loss(self, params, model_state, task, key):
    value, state = super().loss(params, model_state, task, key)
    return value * jnp.nan, state


def test_too_many_nonfinite_meta_steps_stop_with_the_best_phi_kept():
  with pytest.raises(MetaTrainingStopped,
                     match="3 non-finite meta-losses or meta-gradients in a row") as e:
    meta_train(NaNQuadratic(dim=3), CONFIG, TRAIN, progress=False, max_consecutive_nonfinite=3)
  result = e.value.result
  assert result.num_skipped == 3 and len(result.history.meta_loss) == 3
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(result.phi))


DETERMINISM_SCRIPT = textwrap.dedent("""
    import json, sys, jax, numpy as np
    from metaopt import MetaTrainConfig, meta_train
    from metaopt.networks import LSTMConfig
    from metaopt.problems import QuadraticFamily
    cfg = MetaTrainConfig.from_dict(json.loads(sys.argv[2]))
    r = meta_train(QuadraticFamily(dim=3), LSTMConfig((8,)), cfg, progress=False)
    leaves = [np.asarray(x) for x in jax.tree.leaves(r.final_phi)]
    np.savez(sys.argv[1], curve=np.array(r.history.meta_loss), *leaves)
""")


def test_same_seed_gives_the_same_curve_and_phi_across_processes(tmp_path):
  outs = []
  cfg = json.dumps(dataclasses.replace(TRAIN, num_meta_steps=12).to_dict())
  for i in range(2):
    path = tmp_path / f"run{i}.npz"
    subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(path), cfg], check=True,
                   capture_output=True, timeout=300)
    outs.append(np.load(path))
  assert outs[0].files == outs[1].files
  for name in outs[0].files:
    np.testing.assert_array_equal(outs[0][name], outs[1][name])
