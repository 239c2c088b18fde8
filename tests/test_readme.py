import os
import pathlib
import re

import pytest

import metaopt

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _example(heading: str) -> str:
  text = README.read_text()
  section = text[text.index(heading):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_optax_example_runs_and_trains(capsys):
  namespace = {}
  exec(compile(_example("## Use the learned rule in optax"), str(README), "exec"), namespace)
  initial = float(namespace["loss"](namespace["jnp"].zeros(10)))
  final = float(namespace["loss"](namespace["params"]))
  assert final < 0.1 * initial, (initial, final)
  assert "loss" in capsys.readouterr().out


@pytest.mark.skipif("mnist" not in metaopt.list_pretrained(), reason="no shipped MNIST rule")
def test_readme_flax_training_loop_runs_and_trains(monkeypatch):
  if not os.environ.get("METAOPT_DATA_DIR"):
    if not (SHARED / "mnist").is_dir():
      pytest.skip("no local MNIST files (set METAOPT_DATA_DIR)")
    monkeypatch.setenv("METAOPT_DATA_DIR", str(SHARED))
  namespace = {}
  exec(compile(_example("## Use a learned optimizer in your training loop"), str(README), "exec"),
       namespace)
  assert float(namespace["loss"]) < 1.0


def test_readme_names_the_two_commands():
  text = README.read_text()
  assert "make quadratic" in text and "make test" in text


def test_readme_meta_train_example_runs_and_gives_finite_updates(tmp_path, monkeypatch):
  # Exercises the meta-training API of the redesign (MetaTrainConfig with Truncation and
  # Validation, meta_train(..., meta_optimizer=...)): it fails until that API lands; do not skip.
  import jax
  import jax.numpy as jnp
  import numpy as np
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_example("## Meta-train your own"), str(README), "exec"), namespace)
  assert (tmp_path / "my_rule.msgpack").exists()
  optimizer = namespace["optimizer"]
  params = jax.random.normal(jax.random.key(0), (10,))
  state = optimizer.init(params)
  updates, _ = optimizer.update(2.0 * params, state, params)
  assert np.all(np.isfinite(np.asarray(updates)))
  assert float(jnp.abs(updates).sum()) > 0.0
