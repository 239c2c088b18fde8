"""Save and load trained meta-parameters phi together with their configuration.

Files are flax msgpack: ``{"format", "metaopt_version", "config", "params",
"metadata"}``; ``format`` versions the layout. Loading
checks phi's structure and shapes against the stored configuration, and (when
asked) that the configuration is the expected one.

The rules shipped in ``metaopt/pretrained/`` are listed in its ``MANIFEST.json``
(SHA-256, the experiment, results file and commit each came from);
:func:`load_pretrained` checks a file against it. Whole-training-state
checkpoints (meta-training resume) are :mod:`metaopt.train_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import numpy as np
from flax import serialization

from metaopt.networks import RuleConfig, config_from_dict, init_meta_params

FORMAT = "metaopt.meta_params/1"
PRETRAINED_DIR = pathlib.Path(__file__).parent / "pretrained"
MANIFEST = PRETRAINED_DIR / "MANIFEST.json"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Write ``data`` to ``path`` via a temporary file, fsync and rename (never half-written)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_meta_params(path: str | os.PathLike, phi: Any, config: RuleConfig,
                     metadata: dict | None = None) -> None:
  """Save phi and the :class:`LSTMConfig` it was trained with to a msgpack file.

  Args:
    path: destination file (parent folders are created); written atomically.
    phi: meta-parameters.
    config: their network configuration.
    metadata: optional JSON-like dict (e.g. the problem family, training steps).

  Example:
    >>> save_meta_params("phi.msgpack", phi, LSTMConfig(), {"trained_on": "quadratic"})
  """
  from metaopt import __version__

  payload = {
      "format": FORMAT,
      "metaopt_version": __version__,
      "config": config.to_dict(),
      "params": jax.tree.map(np.asarray, serialization.to_state_dict(phi)),
      "metadata": json.loads(json.dumps(metadata or {})),  # tuples -> lists (msgpack)
  }
  atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def _config_difference(a: RuleConfig, b: RuleConfig) -> str:
  da, db = a.to_dict(), b.to_dict()
  keys = list(da) + [k for k in db if k not in da]
  return ", ".join(f"{k}: file has {da.get(k)!r}, expected {db.get(k)!r}"
                   for k in keys if da.get(k) != db.get(k))


def load_meta_params(path: str | os.PathLike, config: RuleConfig | None = None
                     ) -> tuple[Any, RuleConfig, dict]:
  """Load phi saved by :func:`save_meta_params`.

  Args:
    path: the msgpack file.
    config: if given, the file must have been made for exactly this configuration.

  Returns:
    ``(phi, config, metadata)``.

  Raises:
    FileNotFoundError: no such file. ValueError: not a metaopt checkpoint, made
    for another configuration, or its parameters do not match its configuration.

  Example:
    >>> phi, config, meta = load_meta_params("phi.msgpack")
    >>> opt = learned_rule(phi, config)
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no meta-parameter checkpoint at {path}")
  try:
    payload = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types on bad bytes
    raise ValueError(f"{path} is not a readable metaopt checkpoint ({e})") from e
  if not isinstance(payload, dict) or payload.get("format") != FORMAT:
    raise ValueError(f"{path} is not a metaopt meta-parameter checkpoint (format "
                     f"{payload.get('format') if isinstance(payload, dict) else None!r}, "
                     f"expected {FORMAT!r})")
  stored = config_from_dict(payload["config"])
  if config is not None and stored != config:
    raise ValueError(f"checkpoint {path} was made for another network configuration: "
                     f"{_config_difference(stored, config)}")
  template = init_meta_params(stored, jax.random.key(0))
  want = jax.tree_util.tree_flatten_with_path(serialization.to_state_dict(template))[0]
  got = dict(jax.tree_util.tree_flatten_with_path(payload["params"])[0])
  for key_path, leaf in want:
    name = jax.tree_util.keystr(key_path)
    if key_path not in got:
      raise ValueError(f"checkpoint {path} lacks parameter {name} required by its configuration")
    if tuple(got[key_path].shape) != tuple(leaf.shape):
      raise ValueError(f"checkpoint {path}: parameter {name} has shape "
                       f"{tuple(got[key_path].shape)}, its configuration needs {tuple(leaf.shape)}")
  if len(got) != len(want):
    raise ValueError(f"checkpoint {path} holds {len(got)} parameter arrays, its configuration "
                     f"needs {len(want)}")
  phi = serialization.from_state_dict(template, payload["params"])
  return jax.tree.map(jax.numpy.asarray, phi), stored, payload.get("metadata", {})


def list_pretrained() -> list[str]:
  """Names of the pretrained rules shipped with the package."""
  return sorted(p.stem for p in PRETRAINED_DIR.glob("*.msgpack"))


def pretrained_manifest() -> list[dict]:
  """Where each shipped pretrained rule came from, from ``metaopt/pretrained/MANIFEST.json``.

  Returns:
    One dict per shipped rule, sorted by name: ``name``, ``sha256`` (of its
    ``.msgpack`` file), ``experiment``, ``make_target``, ``results_file`` (the
    file under ``results/`` it is a copy of), ``commit`` (the code the
    experiment ran at, from its ``summary.json``), ``shipped_in`` (the commit
    that added the file) and ``version`` (of the rule under that name: it grows
    when a name gets a new rule, and the rule it replaced stays available under
    another name).

  Raises:
    FileNotFoundError: the manifest is missing from the installed package.

  Example:
    >>> {m["name"]: m["results_file"] for m in pretrained_manifest()}["quadratic"]
    'results/quadratic/lstm.msgpack'
  """
  if not MANIFEST.is_file():
    raise FileNotFoundError(f"the pretrained rules' manifest {MANIFEST} is missing")
  return sorted(json.loads(MANIFEST.read_text()), key=lambda entry: entry["name"])


def load_pretrained(name: str) -> tuple[Any, RuleConfig, dict]:
  """Load a shipped pretrained rule by name (e.g. ``"quadratic"``), checked against the manifest.

  Args:
    name: one of :func:`list_pretrained`.

  Returns:
    ``(phi, config, metadata)``; ``learned_rule(phi, config)`` is the optimizer.

  Raises:
    ValueError: no such rule, or its file is not the one the manifest lists
      (missing from it, or a different SHA-256).

  Example:
    >>> phi, config, _ = load_pretrained("quadratic")
  """
  path = PRETRAINED_DIR / f"{name}.msgpack"
  if not path.is_file():
    raise ValueError(f"no pretrained rule named {name!r}; available: {list_pretrained()}")
  entry = {m["name"]: m for m in pretrained_manifest()}.get(name)
  if entry is None:
    raise ValueError(f"pretrained rule {path} is not listed in {MANIFEST}")
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  if digest != entry["sha256"]:
    raise ValueError(f"pretrained rule {path} has SHA-256 {digest}, but {MANIFEST} lists "
                     f"{entry['sha256']} (from {entry['results_file']}): the file was altered")
  return load_meta_params(path)
