"""The meta-step with its runs split over 8 host devices gives the numbers of one device."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from metaopt import MetaTrainConfig, Truncation
    from metaopt.meta_step import prepare, shard_over_devices
    from metaopt.networks import LSTMConfig
    from metaopt.problems import QuadraticFamily
    assert jax.device_count() == 8
    fam, config = QuadraticFamily(dim=5), LSTMConfig((8,))
    cfg = MetaTrainConfig(truncation=Truncation(horizon=6, unroll_length=3), batch_size=16)
    est, _, state, step = prepare(fam, config, cfg)
    single = jax.device_put(state, jax.devices()[0])
    assert len(single.runs.states.params.sharding.device_set) == 1
    # What shard_over_devices is meant to do: runs split over the mesh axis "runs", the
    # rest replicated.
    mesh = Mesh(np.array(jax.devices()), ("runs",))
    sharded = jax.device_put(state._replace(runs=None), NamedSharding(mesh, PartitionSpec()))
    sharded = sharded._replace(
        runs=jax.device_put(state.runs, NamedSharding(mesh, PartitionSpec("runs"))))
    assert len(sharded.runs.states.params.sharding.device_set) == 8
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    grad = jax.jit(jax.value_and_grad(lambda phi, s: est.meta_loss(phi, fam, s.runs)[0]))
    (l1, g1), (l8, g8) = grad(single.phi, single), grad(sharded.phi, sharded)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    jax.tree.map(close, g1, g8)
    s1, m1 = step(fam, single)
    s8, m8 = step(fam, sharded)
    np.testing.assert_allclose(m1["meta_loss"], m8["meta_loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m8["grad_norm"], rtol=1e-4)
    assert bool(m1["finite"]) and bool(m8["finite"])
    jax.tree.map(close, s1.phi, s8.phi)
    jax.tree.map(close, s1.runs.states.params, s8.runs.states.params)
    assert len(s8.runs.states.params.sharding.device_set) == 8
    print("SHARDED-OK", float(l1), float(l8), flush=True)
    # A batch that does not divide the device count is left as it is.
    odd = prepare(fam, config, MetaTrainConfig(truncation=cfg.truncation, batch_size=6)).state
    assert shard_over_devices(odd) is odd
    ours = shard_over_devices(state)
    assert ours.runs is not None, "shard_over_devices dropped the runs"
    assert ours.runs.states.params.sharding.spec == PartitionSpec("runs")
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(ours.phi))
    s, m = step(fam, ours)
    np.testing.assert_allclose(m["meta_loss"], m1["meta_loss"], rtol=1e-5)
    jax.tree.map(close, s.phi, s1.phi)
    print("SHARD-OVER-DEVICES-OK", flush=True)
""")


@pytest.fixture(scope="module")
def eight_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300)


def test_meta_step_sharded_over_8_devices_matches_one_device(eight_devices):
  assert "SHARDED-OK" in eight_devices.stdout, eight_devices.stderr[-3000:]


def test_shard_over_devices_splits_the_runs_and_keeps_the_numbers(eight_devices):
  assert "SHARD-OVER-DEVICES-OK" in eight_devices.stdout, eight_devices.stderr[-3000:]
