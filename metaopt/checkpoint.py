"""Save and load trained meta-parameters phi together with their configuration.

Files are flax msgpack: ``{"format", "metaopt_version", "config", "params",
"metadata"}``; ``format`` versions the layout. Loading
checks phi's structure and shapes against the stored configuration, and (when
asked) that the configuration is the expected one.
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


def load_pretrained(name: str) -> tuple[Any, RuleConfig, dict]:
  """Load a shipped pretrained rule by name (e.g. ``"quadratic"``).

  Returns:
    ``(phi, config, metadata)``; ``learned_rule(phi, config)`` is the optimizer.

  Example:
    >>> phi, config, _ = load_pretrained("quadratic")
  """
  path = PRETRAINED_DIR / f"{name}.msgpack"
  if not path.is_file():
    raise ValueError(f"no pretrained rule named {name!r}; available: {list_pretrained()}")
  return load_meta_params(path)


# ---------------------------------------------------------------------------
# Whole-training-state checkpoints (meta-training resume).

TRAIN_FORMAT = "metaopt.train_state/1"
_MAGIC = b"METAOPT-CKPT1\n"


class CorruptCheckpointError(ValueError):
  """A checkpoint file is truncated or its checksum does not match."""


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_tree_checkpoint(path: str | os.PathLike, tree: Any, meta: dict) -> None:
  """Save a pytree of arrays (typed PRNG keys included) and JSON-like ``meta``, atomically.

  The file is a magic line, the SHA-256 of the payload and the msgpack payload,
  so truncation and bit flips are detected on load.
  """
  leaves = jax.tree.leaves(tree)
  payload = serialization.msgpack_serialize({
      "format": TRAIN_FORMAT,
      "meta": meta,
      "key_leaves": [i for i, x in enumerate(leaves) if _is_key(x)],
      "leaves": {str(i): np.asarray(jax.random.key_data(x) if _is_key(x) else x)
                 for i, x in enumerate(leaves)},
  })
  atomic_write_bytes(path, _MAGIC + hashlib.sha256(payload).digest() + payload)


def load_tree_checkpoint(path: str | os.PathLike, template: Any) -> tuple[Any, dict]:
  """Load a checkpoint written by :func:`save_tree_checkpoint` into ``template``'s structure.

  Raises:
    CorruptCheckpointError: truncated file or checksum mismatch (the message names the path).
    ValueError: the arrays do not fit ``template`` (another configuration).
  """
  path = pathlib.Path(path)
  raw = path.read_bytes()
  head = len(_MAGIC) + 32
  if len(raw) < head or not raw.startswith(_MAGIC):
    raise CorruptCheckpointError(f"checkpoint {path} is truncated or not a metaopt checkpoint")
  payload = raw[head:]
  if hashlib.sha256(payload).digest() != raw[len(_MAGIC):head]:
    raise CorruptCheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
  data = serialization.msgpack_restore(payload)
  if data.get("format") != TRAIN_FORMAT:
    raise ValueError(f"checkpoint {path} has format {data.get('format')!r}, expected {TRAIN_FORMAT!r}")
  template_leaves, treedef = jax.tree.flatten(template)
  stored = data["leaves"]
  if len(stored) != len(template_leaves):
    raise ValueError(f"checkpoint {path} holds {len(stored)} arrays; this configuration needs "
                     f"{len(template_leaves)}")
  keys = set(data["key_leaves"])
  leaves = []
  for i, like in enumerate(template_leaves):
    value = stored[str(i)]
    if _is_key(like) != (i in keys):
      raise ValueError(f"checkpoint {path}: array {i} is {'not ' if i not in keys else ''}a PRNG key")
    if _is_key(like):
      leaves.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(like)))
      continue
    like = np.asarray(like)
    if value.shape != like.shape or value.dtype != like.dtype:
      raise ValueError(f"checkpoint {path}: array {i} is {value.dtype}{list(value.shape)}, this "
                       f"configuration needs {like.dtype}{list(like.shape)}")
    leaves.append(jax.numpy.asarray(value))
  return treedef.unflatten(leaves), data["meta"]
