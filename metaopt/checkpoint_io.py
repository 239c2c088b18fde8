"""Helpers of the whole-training-state checkpoints: digests, quiet orbax, identity differences."""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

_ABSENT = "(absent)"


def _drop_orphans(wait_s: float = 1.0) -> None:
  """Collect orbax's abandoned read coroutines after a failed restore, without their tracebacks.

  When one array fails to read, orbax abandons the other reads on its
  ``asyncio_*`` threads; each, when collected, would print a long TensorStore
  error on stderr. Waits (at most ``wait_s``) for those threads, then collects.
  """
  deadline = time.monotonic() + wait_s
  for thread in threading.enumerate():
    if thread.name.startswith("asyncio_") and thread is not threading.current_thread():
      thread.join(max(0.0, deadline - time.monotonic()))
  hook = sys.unraisablehook
  sys.unraisablehook = lambda _: None
  try:
    gc.collect()
  finally:
    sys.unraisablehook = hook


def _brief(e: BaseException) -> str:
  """One line for an orbax/tensorstore error (their messages embed whole TensorStore specs)."""
  parts = []
  while e is not None and len(parts) < 3:
    text = str(e).split(" See full TensorStore details")[0].splitlines()
    parts.append(f"{type(e).__name__}: {text[0] if text else ''}"[:300])
    e = e.__cause__ or e.__context__
  return " <- ".join(parts)


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _digest(x: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(x).reshape(-1).view(np.uint8)).hexdigest()


def _sync(name: str) -> None:
  """A barrier of all processes (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"metaopt.train_checkpoint.{name}")


def _plain(x: Any) -> Any:
  """``x`` as plain JSON types (tuples -> lists; numpy and jax scalars/arrays -> numbers/lists)."""
  default = lambda v: np.asarray(v).tolist()
  return json.loads(json.dumps(x, default=default))


def _json_digest(body: dict) -> str:
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
  """Each differing field of two JSON trees: ``dotted.path: checkpoint has A, this run has B``."""
  if isinstance(stored, dict) and isinstance(current, dict):
    out = []
    for k in list(stored) + [k for k in current if k not in stored]:
      out += _differences(stored.get(k, _ABSENT), current.get(k, _ABSENT), f"{prefix}{k}.")
    return out
  if stored == current and isinstance(stored, bool) == isinstance(current, bool):
    return []  # 1 == 1.0, but True is not 1
  show = lambda v: v if v is _ABSENT else json.dumps(v)
  return [f"{prefix[:-1] or '(identity)'}: checkpoint has {show(stored)}, "
          f"this run has {show(current)}"]


def _restore_like(leaf: Any, value: Any) -> Any:
  """``value`` as the template ``leaf``'s kind (typed key, jax array, numpy, Python scalar)."""
  if _is_key(leaf):
    return jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
  if isinstance(leaf, (jax.Array, np.ndarray)):
    return value
  value = np.asarray(value)
  return value[()] if isinstance(leaf, np.generic) else type(leaf)(value.item())
