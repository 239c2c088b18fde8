import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_optax_example_runs_and_trains(capsys):
  text = README.read_text()
  section = text[text.index("## Use the learned rule in optax"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  exec(compile(code, str(README), "exec"), namespace)
  initial = float(namespace["loss"](namespace["jnp"].zeros(10)))
  final = float(namespace["loss"](namespace["params"]))
  assert final < 0.1 * initial, (initial, final)
  assert "loss" in capsys.readouterr().out


def test_readme_names_the_two_commands():
  text = README.read_text()
  assert "make quadratic" in text and "make test" in text
