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
