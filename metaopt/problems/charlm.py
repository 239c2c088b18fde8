"""A tiny GRU character language model on Python's own standard-library sources.

The text is available offline everywhere Python is: the top-level ``*.py`` files
of the standard library (``os.path.dirname(os.__file__)``), read in sorted order,
concatenated and cut to ``max_bytes``; it depends only on the Python version.
Bytes map to a fixed vocabulary (:data:`VOCAB`: newline and printable ASCII, the
rest to an "other" symbol 0), and the token ids stay on the device; each loss draws
``batch_size`` windows of ``seq_len + 1`` characters with the run's key and scores
next-character prediction (mean cross-entropy in nats).
"""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metaopt.problems.classification import cross_entropy

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
"""The characters of the vocabulary; token ``i + 1`` is ``VOCAB[i]``, token 0 any other byte."""
VOCAB_SIZE = len(VOCAB) + 1

_TABLE = np.zeros(256, np.uint8)
_TABLE[[ord(c) for c in VOCAB]] = np.arange(1, VOCAB_SIZE, dtype=np.uint8)


def stdlib_text(max_bytes: int | None = 1 << 20) -> bytes:
  """The top-level ``*.py`` files of the standard library, sorted by name, concatenated.

  Example:
    >>> text = stdlib_text(100_000)
  """
  folder = pathlib.Path(os.path.dirname(os.__file__))
  chunks, total = [], 0
  for path in sorted(folder.glob("*.py")):
    chunks.append(path.read_bytes())
    total += len(chunks[-1])
    if max_bytes is not None and total >= max_bytes:
      break
  text = b"".join(chunks)
  return text if max_bytes is None else text[:max_bytes]


def encode(text: bytes) -> np.ndarray:
  """Token ids (uint8) of ``text`` under :data:`VOCAB`."""
  return _TABLE[np.frombuffer(text, np.uint8)]


def decode(tokens) -> str:
  """The text of token ids (token 0 shows as ``"?"``)."""
  return "".join(VOCAB[t - 1] if t else "?" for t in np.asarray(tokens).tolist())


class CharLMTask(NamedTuple):
  """Problems differ only in theta_0 and minibatch stream (the run key): no task data."""


class CharLMFamily(struct.PyTreeNode):
  """Next-character cross-entropy of a one-layer GRU on device-resident token ids.

  Parameters: ``embed`` (V, E); ``gru`` with ``w_x`` (E, 3H), ``w_h`` (H, 3H), ``b`` (3H,)
  (reset, update and candidate gates); ``out`` with ``w`` (H, V), ``b`` (V,). theta_0:
  weights i.i.d. N(0, 1 / fan_in) (embedding N(0, 1)), biases 0.

  Attributes:
    tokens: uint8 (N,) token ids in [0, VOCAB_SIZE).
    embed_size: E.
    hidden_size: H.
    seq_len: characters predicted per window.
    batch_size: windows per minibatch.
    run_mode: ``"vmap"`` (:func:`metaopt.unroll.map_runs`).

  Example:
    >>> fam = CharLMFamily.from_stdlib(max_bytes=200_000, hidden_size=32)
    >>> params, state = fam.init(fam.sample_task(key), key)
  """

  tokens: jax.Array
  embed_size: int = struct.field(pytree_node=False, default=16)
  hidden_size: int = struct.field(pytree_node=False, default=32)
  seq_len: int = struct.field(pytree_node=False, default=32)
  batch_size: int = struct.field(pytree_node=False, default=32)
  run_mode: str = struct.field(pytree_node=False, default="vmap")

  @classmethod
  def from_text(cls, text: bytes, **kwargs) -> CharLMFamily:
    """Build from raw bytes (encoded with :func:`encode`)."""
    for name in ("embed_size", "hidden_size", "seq_len", "batch_size"):
      if name in kwargs and int(kwargs[name]) <= 0:
        raise ValueError(f"CharLMFamily.{name} must be positive, got {kwargs[name]}")
    tokens = encode(text)
    if len(tokens) <= kwargs.get("seq_len", 32) + 1:
      raise ValueError(f"CharLMFamily: {len(tokens)} characters of text are too few")
    return cls(jnp.asarray(tokens), **kwargs)

  @classmethod
  def from_stdlib(cls, max_bytes: int | None = 1 << 20, **kwargs) -> CharLMFamily:
    """Build from :func:`stdlib_text` (the standard library's sources)."""
    return cls.from_text(stdlib_text(max_bytes), **kwargs)

  def sample_task(self, key: jax.Array) -> CharLMTask:
    """No task data: runs differ by their key (theta_0 and minibatches)."""
    del key
    return CharLMTask()

  def init(self, task: CharLMTask, key: jax.Array):
    """Embedding N(0, 1), weights N(0, 1 / fan_in), biases 0; no model state."""
    del task
    e, h, v = self.embed_size, self.hidden_size, VOCAB_SIZE
    k_e, k_x, k_h, k_o = jax.random.split(key, 4)
    return {"embed": jax.random.normal(k_e, (v, e)),
            "gru": {"w_x": jax.random.normal(k_x, (e, 3 * h)) / np.sqrt(e),
                    "w_h": jax.random.normal(k_h, (h, 3 * h)) / np.sqrt(h),
                    "b": jnp.zeros((3 * h,))},
            "out": {"w": jax.random.normal(k_o, (h, v)) / np.sqrt(h), "b": jnp.zeros((v,))}}, ()

  def logits(self, params, inputs: jax.Array) -> jax.Array:
    """Next-token logits (B, T, V) of token ids ``inputs`` (B, T), from a zero state."""
    h_size = self.hidden_size
    gru = params["gru"]
    gates_x = params["embed"][inputs] @ gru["w_x"] + gru["b"]          # (B, T, 3H)

    def step(h, gx):
      gh = h @ gru["w_h"]
      r = jax.nn.sigmoid(gx[:, :h_size] + gh[:, :h_size])
      z = jax.nn.sigmoid(gx[:, h_size:2 * h_size] + gh[:, h_size:2 * h_size])
      n = jnp.tanh(gx[:, 2 * h_size:] + r * gh[:, 2 * h_size:])
      h = (1 - z) * n + z * h
      return h, h

    h0 = jnp.zeros((inputs.shape[0], h_size), gates_x.dtype)
    _, hs = jax.lax.scan(step, h0, jnp.swapaxes(gates_x, 0, 1))   # (T, B, H)
    return jnp.swapaxes(hs, 0, 1) @ params["out"]["w"] + params["out"]["b"]

  def loss(self, params, model_state, task: CharLMTask, key: jax.Array):
    """Mean next-character cross-entropy on ``batch_size`` windows drawn with ``key``."""
    del task
    starts = jax.random.randint(key, (self.batch_size,), 0,
                                self.tokens.shape[0] - self.seq_len - 1)
    windows = self.tokens[starts[:, None] + jnp.arange(self.seq_len + 1)].astype(jnp.int32)
    logits = self.logits(params, windows[:, :-1])
    return (cross_entropy(logits.reshape(-1, VOCAB_SIZE), windows[:, 1:].reshape(-1)),
            model_state)
