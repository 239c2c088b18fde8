import jax
import numpy as np
import pytest

import metaopt
from metaopt.checkpoint import load_meta_params, load_pretrained, save_meta_params
from metaopt.networks import LSTMConfig, init_meta_params


def test_round_trip(tmp_path):
  config = LSTMConfig((8, 4), "log_sign", output_scale=0.1)
  phi = init_meta_params(config, jax.random.key(3))
  save_meta_params(tmp_path / "phi.msgpack", phi, config, {"trained_on": "test"})
  loaded, loaded_config, meta = load_meta_params(tmp_path / "phi.msgpack", config)
  assert loaded_config == config and meta == {"trained_on": "test"}
  jax.tree.map(np.testing.assert_array_equal, loaded, phi)
  assert not list(tmp_path.glob("*.tmp"))


def test_other_configuration_is_refused_with_the_difference_named(tmp_path):
  save_meta_params(tmp_path / "phi.msgpack", init_meta_params(LSTMConfig(), jax.random.key(0)),
                   LSTMConfig())
  with pytest.raises(ValueError, match=r"another network configuration: hidden_sizes: "
                                       r"file has \[20, 20\], expected \[10, 10\]"):
    load_meta_params(tmp_path / "phi.msgpack", LSTMConfig(hidden_sizes=(10, 10)))


def test_params_not_matching_their_configuration_are_refused(tmp_path):
  phi = init_meta_params(LSTMConfig(hidden_sizes=(5,)), jax.random.key(0))
  save_meta_params(tmp_path / "phi.msgpack", phi, LSTMConfig())  # wrong config on purpose
  with pytest.raises(ValueError, match="shape|lacks parameter"):
    load_meta_params(tmp_path / "phi.msgpack")


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="no meta-parameter checkpoint"):
    load_meta_params(tmp_path / "nope.msgpack")
  (tmp_path / "bad.msgpack").write_bytes(b"\x00garbage")
  with pytest.raises(ValueError, match="bad.msgpack"):
    load_meta_params(tmp_path / "bad.msgpack")
  with pytest.raises(ValueError, match="no pretrained rule named 'nope'"):
    load_pretrained("nope")


def test_shipped_quadratic_rule_loads_and_runs():
  assert "quadratic" in metaopt.list_pretrained()
  phi, config, meta = load_pretrained("quadratic")
  assert config.preprocessing == "none" and meta["experiment"] == "quadratic"
  rule = metaopt.learned_rule(phi, config)
  x = jax.numpy.ones(10)
  updates, _ = rule.update(x, rule.init(x))
  assert updates.shape == (10,)
