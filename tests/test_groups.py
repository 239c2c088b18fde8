import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt import MetaTrainConfig, Truncation
from metaopt.checkpoint import load_meta_params, save_meta_params
from metaopt.meta_step import prepare
from metaopt.networks import GroupedLSTMConfig, LSTMConfig, init_meta_params
from metaopt.problems.mlp import MLPFamily
from metaopt.rule import learned_rule

CONFIG = GroupedLSTMConfig(
    groups=(("first", LSTMConfig((8,))), ("rest", LSTMConfig((6, 5), "log_sign"))),
    assign=((r"layer_0", "first"),), default="rest")


def _params():
  return {"layer_0": {"w": jnp.ones((4, 3)), "b": jnp.ones(3)},
          "layer_1": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}}


def test_labels_follow_parameter_paths_and_bad_configs_are_rejected():
  assert CONFIG.labels(_params()) == {"layer_0": {"w": "first", "b": "first"},
                                      "layer_1": {"w": "rest", "b": "rest"}}
  with pytest.raises(ValueError, match="unknown group 'conv'"):
    GroupedLSTMConfig(groups=(("fc", LSTMConfig()),), assign=((r"conv", "conv"),))
  no_default = GroupedLSTMConfig(groups=(("fc", LSTMConfig()),), assign=((r"layer_0", "fc"),))
  with pytest.raises(ValueError, match=r"\['layer_1'\]\['b'\] matches no pattern"):
    no_default.labels(_params())


def test_grouped_rule_applies_each_groups_own_lstm():
  phi = jax.tree.map(lambda x: 4.0 * x, init_meta_params(CONFIG, jax.random.key(0)))
  assert set(phi) == {"first", "rest"}
  params = _params()
  grads = jax.tree.map(lambda p: 0.3 * p, params)
  rule = learned_rule(phi, CONFIG)
  updates, _ = jax.jit(rule.update)(grads, rule.init(params))
  for group, name in (("first", "layer_0"), ("rest", "layer_1")):
    alone = learned_rule(phi[group], dict(CONFIG.groups)[group])
    expected, _ = alone.update(grads[name], alone.init(params[name]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates[name], expected)
  assert not np.allclose(updates["layer_0"]["b"][:2], updates["layer_1"]["b"])


def test_meta_gradients_reach_every_group_and_checkpoints_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  fam = MLPFamily.from_arrays(rng.integers(0, 256, (64, 4, 4, 1), dtype=np.uint8),
                              rng.integers(0, 10, 64), hidden_sizes=(5,), batch_size=16,
                              init_scale=0.1)
  cfg = MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), batch_size=2)
  _, _, state, meta_step = prepare(fam, CONFIG, cfg)
  new_state, metrics = meta_step(fam, state)
  assert bool(metrics["finite"])
  for group in ("first", "rest"):
    change = optax.tree.norm(jax.tree.map(jnp.subtract, new_state.phi[group], state.phi[group]))
    assert float(change) > 0, group
  save_meta_params(tmp_path / "g.msgpack", new_state.phi, CONFIG)
  phi, config, _ = load_meta_params(tmp_path / "g.msgpack", CONFIG)
  assert config == CONFIG
  jax.tree.map(np.testing.assert_array_equal, phi, new_state.phi)
  with pytest.raises(ValueError, match="another network configuration"):
    load_meta_params(tmp_path / "g.msgpack", LSTMConfig())
