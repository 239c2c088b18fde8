"""Packaging: `import metaopt` needs only the core dependencies; one version source."""

import pathlib
import subprocess
import sys

import metaopt

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Installed only by the extras (setup.cfg): the core library must not import them.
EXTRAS_ONLY = ("tensorflow", "tensorflow_datasets", "matplotlib", "tqdm", "PIL", "skimage")


def test_import_metaopt_imports_no_extra_only_package():
  code = ("import sys, metaopt; "
          f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({EXTRAS_ONLY!r})))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == "[]", f"import metaopt imported {out.strip()}"


def test_setup_cfg_version_is_metaopt_version():
  # setuptools reads `version = attr: metaopt.__version__` statically (without importing jax).
  from setuptools.config.setupcfg import read_configuration

  config = read_configuration(ROOT / "setup.cfg")
  assert config["metadata"]["version"] == metaopt.__version__


def test_every_module_fits_in_a_few_screens():
  root = pathlib.Path(__file__).resolve().parents[1] / "metaopt"
  long = {str(p.relative_to(root)): n for p in root.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > 300}
  assert not long, f"modules over 300 lines: {long}"
