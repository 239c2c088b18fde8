"""MLP autoencoders on flattened images with a squared-error reconstruction loss.

Encoder ``D -> h_1 -> ... -> h_k`` (the code), decoder the mirror image
``h_k -> ... -> h_1 -> D`` with a linear output; the loss is the mean over the
minibatch and pixels of ``(x_hat - x)^2`` with pixels in [0, 1]. The images
stay on the device (uint8) and each loss draws its minibatch with the run's key;
labels are not used.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metaopt.problems.mlp import ACTIVATIONS


class AutoencoderTask(NamedTuple):
  """Problems differ only in theta_0 and minibatch stream (the run key): no task data."""


class AutoencoderFamily(struct.PyTreeNode):
  """Mean squared reconstruction error of an MLP autoencoder on image minibatches.

  Parameters: ``layer_<i>`` with ``w`` (n_in, n_out) and ``b`` (n_out,) for the
  encoder's and then the decoder's layers; theta_0: ``w`` i.i.d. N(0, 1 / n_in), ``b`` 0.

  Attributes:
    images: uint8 (N, H, W, C) training images.
    hidden_sizes: the encoder's widths, the last one the code size (e.g. (32, 8)).
    activation: one of :data:`metaopt.problems.mlp.ACTIVATIONS` (hidden layers only).
    batch_size: minibatch size.
    run_mode: ``"vmap"`` (:func:`metaopt.unroll.map_runs`).

  Example:
    >>> ds = metaopt.data.load_dataset("mnist")
    >>> fam = AutoencoderFamily.from_arrays(downsample(ds.train_images, 8), hidden_sizes=(16, 4))
    >>> params, state = fam.init(fam.sample_task(key), key)
  """

  images: jax.Array
  hidden_sizes: tuple[int, ...] = struct.field(pytree_node=False, default=(32,))
  activation: str = struct.field(pytree_node=False, default="tanh")
  batch_size: int = struct.field(pytree_node=False, default=64)
  run_mode: str = struct.field(pytree_node=False, default="vmap")

  @classmethod
  def from_arrays(cls, images, **kwargs) -> AutoencoderFamily:
    """Build from uint8 images (N, H, W, C), validating the configuration first."""
    hidden = tuple(int(h) for h in kwargs.pop("hidden_sizes", (32,)))
    if not hidden or min(hidden) <= 0:
      raise ValueError(f"AutoencoderFamily.hidden_sizes must be non-empty and positive, got "
                       f"{hidden}")
    if kwargs.get("activation", "tanh") not in ACTIVATIONS:
      raise ValueError(f"AutoencoderFamily.activation {kwargs['activation']!r} unknown; expected "
                       f"one of {sorted(ACTIVATIONS)}")
    if int(kwargs.get("batch_size", 64)) <= 0:
      raise ValueError(f"AutoencoderFamily.batch_size must be positive, got {kwargs['batch_size']}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"AutoencoderFamily.images must be uint8 (N, H, W, C), got {images.dtype} "
                       f"{images.shape}")
    return cls(jnp.asarray(images), hidden_sizes=hidden, **kwargs)

  def layer_sizes(self) -> tuple[int, ...]:
    """Widths from the input through the code back to the reconstruction."""
    dim = int(np.prod(self.images.shape[1:]))
    hidden = tuple(self.hidden_sizes)
    return (dim,) + hidden + hidden[-2::-1] + (dim,)

  def sample_task(self, key: jax.Array) -> AutoencoderTask:
    """No task data: runs differ by their key (theta_0 and minibatches)."""
    del key
    return AutoencoderTask()

  def init(self, task: AutoencoderTask, key: jax.Array):
    """``w`` i.i.d. N(0, 1 / n_in), ``b`` 0; no model state."""
    del task
    sizes = self.layer_sizes()
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"layer_{i}": {"w": jax.random.normal(k, (n_in, n_out)) / np.sqrt(n_in),
                           "b": jnp.zeros((n_out,))}
            for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}, ()

  def reconstruct(self, params, x: jax.Array) -> jax.Array:
    """The reconstruction of flattened images ``x`` (B, D) in [0, 1]."""
    act = ACTIVATIONS[self.activation]
    n = len(params)
    for i in range(n):
      x = x @ params[f"layer_{i}"]["w"] + params[f"layer_{i}"]["b"]
      if i < n - 1:
        x = act(x)
    return x

  def loss(self, params, model_state, task: AutoencoderTask, key: jax.Array):
    """Mean squared error over a minibatch of ``batch_size`` images drawn with ``key``."""
    del task
    idx = jax.random.randint(key, (self.batch_size,), 0, self.images.shape[0])
    x = self.images[idx].reshape(self.batch_size, -1).astype(jnp.float32) / 255.0
    return jnp.mean(jnp.square(self.reconstruct(params, x) - x)), model_state
