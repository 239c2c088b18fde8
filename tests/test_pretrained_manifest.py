"""The shipped pretrained rules match their manifest and the results files they were copied from."""

import hashlib
import json
import pathlib
import shutil

import pytest

from metaopt import checkpoint
from metaopt.checkpoint import list_pretrained, load_pretrained, pretrained_manifest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIELDS = {"name", "sha256", "experiment", "make_target", "results_file", "commit", "shipped_in",
          "version"}


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_shipped_file_is_in_the_manifest_and_vice_versa():
  names = [entry["name"] for entry in pretrained_manifest()]
  assert names == list_pretrained() and len(set(names)) == len(names)
  for entry in pretrained_manifest():
    assert set(entry) == FIELDS, entry
    assert len(entry["commit"]) == 40 and len(entry["shipped_in"]) == 40
    assert isinstance(entry["version"], int) and entry["version"] >= 1


@pytest.mark.parametrize("entry", pretrained_manifest(), ids=lambda e: e["name"])
def test_shipped_file_matches_its_manifest_entry_and_results_file(entry):
  shipped = checkpoint.PRETRAINED_DIR / f"{entry['name']}.msgpack"
  assert _sha256(shipped) == entry["sha256"]
  results = ROOT / entry["results_file"]
  assert entry["results_file"].startswith("results/") and results.is_file()
  assert results.read_bytes() == shipped.read_bytes()
  summary = json.loads((results.parent / "summary.json").read_text())
  assert summary["experiment"] == entry["experiment"] and summary["commit"] == entry["commit"]
  _, _, metadata = load_pretrained(entry["name"])
  assert metadata["experiment"] == entry["experiment"]


@pytest.fixture
def pretrained_copy(tmp_path, monkeypatch):
  """A writable copy of the shipped rules, installed as the package's pretrained folder."""
  folder = tmp_path / "pretrained"
  shutil.copytree(checkpoint.PRETRAINED_DIR, folder)
  monkeypatch.setattr(checkpoint, "PRETRAINED_DIR", folder)
  monkeypatch.setattr(checkpoint, "MANIFEST", folder / "MANIFEST.json")
  return folder


def test_altered_shipped_file_is_refused_by_name(pretrained_copy):
  path = pretrained_copy / "quadratic.msgpack"
  data = bytearray(path.read_bytes())
  data[-1] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"quadratic\.msgpack has SHA-256 .* the file was altered"):
    load_pretrained("quadratic")


def test_file_missing_from_the_manifest_is_refused(pretrained_copy):
  shutil.copy(pretrained_copy / "quadratic.msgpack", pretrained_copy / "extra.msgpack")
  with pytest.raises(ValueError, match=r"extra\.msgpack is not listed in .*MANIFEST\.json"):
    load_pretrained("extra")
  (pretrained_copy / "MANIFEST.json").unlink()
  with pytest.raises(FileNotFoundError, match="manifest"):
    load_pretrained("quadratic")
