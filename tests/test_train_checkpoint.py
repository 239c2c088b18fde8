"""Whole-training-state checkpoints: round trip, retention, damage, identity, set_aside."""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt.train_checkpoint import CheckpointError, CorruptCheckpointError, TrainCheckpointer

IDENTITY = {"rule": {"hidden_sizes": [8], "preprocessing": "log_sign"},
            "meta_train": {"batch_size": 4, "truncation": {"horizon": 10}}}


def _tree(seed: int):
  k = jax.random.key(seed)
  return {"phi": {"w": jax.random.normal(k, (5, 3)), "b": jnp.arange(3, dtype=jnp.int32) + seed,
                  "big": jax.random.normal(jax.random.fold_in(k, 2), (16, 64))},  # not inlined
          "key": jax.random.fold_in(k, 1), "phi_avg": None, "empty": (),
          "host": np.full((2,), seed, np.float64), "bf16": jnp.ones(4, jnp.bfloat16) * seed}


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert type(x) is type(y) and x.dtype == y.dtype
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert jax.random.key_impl(x) == jax.random.key_impl(y)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))


def _saved(tmp_path, steps=(1, 2), keep=2):
  ckpt = TrainCheckpointer(tmp_path / "ckpt", IDENTITY, keep=keep)
  for step in steps:
    path = ckpt.save(step, _tree(step), {"step": step, "history": [0.5, float(step)]})
    assert path == ckpt.path(step) and path.is_dir()
  return ckpt


def test_round_trip_is_bit_identical_with_keys_none_and_dtypes(tmp_path):
  ckpt = _saved(tmp_path, steps=(3,))
  tree, info = ckpt.restore(_tree(0))
  _assert_same(tree, _tree(3))
  assert tree["phi_avg"] is None and tree["empty"] == ()
  assert info == {"step": 3, "history": [0.5, 3.0]}
  assert jax.random.normal(tree["key"]).item() == jax.random.normal(_tree(3)["key"]).item()


def test_keeps_the_newest_two(tmp_path):
  ckpt = _saved(tmp_path, steps=(1, 2, 3, 4))
  assert ckpt.steps() == [4, 3]
  assert sorted(p.name for p in ckpt.directory.iterdir()) == ["step_000000003", "step_000000004"]
  assert ckpt.restore(_tree(0))[1]["step"] == 4


def test_a_killed_save_is_ignored_then_cleaned_up(tmp_path):
  ckpt = _saved(tmp_path)
  partial = ckpt.directory / "step_000000009.orbax-checkpoint-tmp-1234"  # as a killed save leaves
  shutil.copytree(ckpt.path(2), partial)
  assert ckpt.steps() == [2, 1] and ckpt.restore(_tree(0))[1]["step"] == 2
  ckpt.save(3, _tree(3), {"step": 3})
  assert not partial.exists() and ckpt.steps() == [3, 2]


def test_saving_an_earlier_step_replaces_later_ones(tmp_path):
  ckpt = _saved(tmp_path, steps=(1, 2))
  ckpt.save(2, _tree(7), {"step": 2})
  assert ckpt.steps() == [2, 1]
  _assert_same(ckpt.restore(_tree(0))[0], _tree(7))


def _largest_data_file(path):
  """The array data: tensorstore's OCDBT files under ``state/**/d/``; the largest holds ``big``."""
  return max((p for p in (path / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


def _truncate(path):
  f = _largest_data_file(path)
  f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _flip(path):
  f = _largest_data_file(path)
  data = bytearray(f.read_bytes())
  data[len(data) // 2] ^= 0x01
  f.write_bytes(bytes(data))


def _drop_meta(path):
  for f in (path / "meta").iterdir():
    f.unlink()


@pytest.mark.parametrize("damage", [_truncate, _flip, _drop_meta])
def test_damaged_newest_falls_back_to_the_previous(tmp_path, damage, capfd):
  ckpt = _saved(tmp_path)
  damage(ckpt.path(2))
  tree, info = ckpt.restore(_tree(0))
  assert info["step"] == 1
  _assert_same(tree, _tree(1))
  err = capfd.readouterr()
  assert str(ckpt.path(2)) in err.err and "damaged" in err.err and not err.out


def test_all_damaged_or_none_is_an_error(tmp_path, capfd):
  ckpt = TrainCheckpointer(tmp_path / "empty", IDENTITY)
  with pytest.raises(CheckpointError, match="no readable checkpoint in .*there is none"):
    ckpt.restore(_tree(0))
  assert not ckpt.directory.exists()
  ckpt = _saved(tmp_path)
  _flip(ckpt.path(2))
  _truncate(ckpt.path(1))
  with pytest.raises(CheckpointError, match="no readable checkpoint") as e:
    ckpt.restore(_tree(0))
  assert not isinstance(e.value, CorruptCheckpointError)
  assert str(ckpt.path(2)) in str(e.value) and str(ckpt.path(1)) in str(e.value)
  assert "checksum" in str(e.value)


def test_other_configuration_names_every_differing_field(tmp_path):
  _saved(tmp_path)
  other = {"rule": {"hidden_sizes": [16], "preprocessing": "log_sign"},
           "meta_train": {"batch_size": 8, "truncation": {"horizon": 10}, "new": True}}
  bigger = _tree(0)
  bigger["phi"]["w"] = jnp.zeros((5, 16))  # identity is checked before shapes
  with pytest.raises(CheckpointError, match="another configuration") as e:
    TrainCheckpointer(tmp_path / "ckpt", other).restore(bigger)
  msg = str(e.value)
  assert "rule.hidden_sizes: checkpoint has [8], this run has [16]" in msg
  assert "meta_train.batch_size: checkpoint has 4, this run has 8" in msg
  assert "meta_train.new: checkpoint has (absent), this run has true" in msg
  assert "horizon" not in msg and "step_000000002" in msg


def test_arrays_not_fitting_the_template_are_refused(tmp_path):
  ckpt = _saved(tmp_path)
  bigger = _tree(0)
  bigger["phi"]["w"] = jnp.zeros((5, 16))
  with pytest.raises(CheckpointError, match=r"\['phi'\]\['w'\] is float32\[5, 3\]"):
    ckpt.restore(bigger)


def test_set_aside_moves_checkpoints(tmp_path, capfd):
  ckpt = _saved(tmp_path)
  ckpt.set_aside()
  assert ckpt.steps() == []
  assert "replaced" in capfd.readouterr().err
  assert sorted(p.name for p in (ckpt.directory / "replaced").iterdir()) == [
      "step_000000001", "step_000000002"]
  ckpt.save(1, _tree(5), {"step": 1})
  ckpt.set_aside()  # replaces the earlier set-aside copy of step 1
  assert ckpt.steps() == [] and len(list((ckpt.directory / "replaced").iterdir())) == 2


def test_sharded_leaves_restore_with_the_template_sharding(tmp_path):
  script = textwrap.dedent(f"""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      from metaopt.train_checkpoint import TrainCheckpointer
      mesh = jax.make_mesh((8,), ("d",))
      def tree(seed):
        s = NamedSharding(mesh, P("d"))
        return {{"w": jax.device_put(jnp.arange(16.0) + seed, s),
                 "k": jax.device_put(jax.random.split(jax.random.key(seed), 8), s),
                 "r": jnp.ones(3) * seed, "none": None}}
      ckpt = TrainCheckpointer({str(tmp_path)!r}, {{"a": 1}})
      ckpt.save(1, tree(1), {{}})
      out, _ = ckpt.restore(tree(0))
      assert out["w"].sharding == tree(0)["w"].sharding and out["k"].sharding.spec == P("d")
      np.testing.assert_array_equal(out["w"], tree(1)["w"])
      data = jax.random.key_data
      np.testing.assert_array_equal(data(out["k"]), data(tree(1)["k"]))
      print("ok")
      """)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
  assert result.returncode == 0 and result.stdout == "ok\n", result.stderr[-3000:]
