import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from metaopt.meta_train import MetaTrainConfig, init_train_state, make_meta_step, truncated_meta_loss
    from metaopt.networks import LSTMConfig
    from metaopt.problems import QuadraticFamily
    assert jax.device_count() == 8
    fam, config = QuadraticFamily(dim=5), LSTMConfig((8,))
    cfg = MetaTrainConfig(horizon=6, unroll_length=3, batch_size=16)
    sharded = init_train_state(fam, config, cfg)
    assert len(sharded.runs.params.sharding.device_set) == 8, sharded.runs.params.sharding
    single = jax.device_put(sharded, jax.devices()[0])
    grad = jax.jit(jax.value_and_grad(
        lambda phi, s: truncated_meta_loss(phi, config, fam, s.tasks, s.runs, 3)[0]))
    (l1, g1), (l8, g8) = grad(single.phi, single), grad(sharded.phi, sharded)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g8)
    step = make_meta_step(config, cfg)
    s1, m1 = step(fam, single)
    s8, m8 = step(fam, sharded)
    np.testing.assert_allclose(m1["meta_loss"], m8["meta_loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.phi, s8.phi)
    assert len(s8.runs.params.sharding.device_set) == 8
    print("SHARDED-OK", float(l1), float(l8))
""")


def test_meta_step_sharded_over_8_devices_matches_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
  assert "SHARDED-OK" in out.stdout, out.stderr[-3000:]
