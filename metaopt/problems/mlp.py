"""MLP classifiers on image data (the paper's section 3.2, MNIST).

The training images stay on the device as uint8 arrays (a pytree field of the
family); each loss evaluation draws a minibatch of indices with ``jax.random``
inside the unroll's scan, so no data crosses the host during an unroll.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metaopt.problems.classification import classification_metrics, minibatch_cross_entropy

__all__ = ["ACTIVATIONS", "MLPFamily", "MLPTask", "classification_metrics"]

ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh,
               "gelu": jax.nn.gelu}


class MLPTask(NamedTuple):
  """MLP problems differ only in theta_0 and minibatch stream (the run key): no task data."""


class MLPFamily(struct.PyTreeNode):
  """Cross-entropy of an MLP on minibatches of a device-resident image set.

  Attributes:
    images: uint8 (N, H, W, C) training images (scaled to [0, 1] per minibatch).
    labels: int32 (N,) labels in [0, num_classes).
    hidden_sizes: units per hidden layer (paper's base net: (20,)).
    activation: "sigmoid" (paper), "relu", "tanh" or "gelu".
    batch_size: minibatch size (paper: 128).
    init_scale: theta_0 ~ N(0, init_scale^2) for every weight and bias.
    num_classes: output units.
    run_mode: how a batch of runs is mapped (:func:`metaopt.unroll.map_runs`).

  Example:
    >>> ds = metaopt.data.load_dataset("mnist")
    >>> fam = MLPFamily.from_dataset(ds)
    >>> params, _ = fam.init(fam.sample_task(key), key)
  """

  images: jax.Array
  labels: jax.Array
  hidden_sizes: tuple[int, ...] = struct.field(pytree_node=False, default=(20,))
  activation: str = struct.field(pytree_node=False, default="sigmoid")
  batch_size: int = struct.field(pytree_node=False, default=128)
  init_scale: float = struct.field(pytree_node=False, default=0.1)
  num_classes: int = struct.field(pytree_node=False, default=10)
  run_mode: str = struct.field(pytree_node=False, default="vmap")

  @classmethod
  def from_arrays(cls, images, labels, **kwargs) -> MLPFamily:
    """Build from numpy arrays, validating the configuration first."""
    hidden = tuple(int(h) for h in kwargs.pop("hidden_sizes", (20,)))
    if any(h <= 0 for h in hidden):
      raise ValueError(f"MLPFamily.hidden_sizes must be positive, got {hidden}")
    activation = kwargs.get("activation", "sigmoid")
    if activation not in ACTIVATIONS:
      raise ValueError(f"MLPFamily.activation {activation!r} unknown; expected one of "
                       f"{sorted(ACTIVATIONS)}")
    if int(kwargs.get("batch_size", 128)) <= 0:
      raise ValueError(f"MLPFamily.batch_size must be positive, got {kwargs['batch_size']}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"MLPFamily.images must be uint8 (N, H, W, C), got {images.dtype} "
                       f"{images.shape}")
    return cls(jnp.asarray(images), jnp.asarray(labels, jnp.int32), hidden_sizes=hidden, **kwargs)

  @classmethod
  def from_dataset(cls, dataset, **kwargs) -> MLPFamily:
    """The training split of a :class:`metaopt.data.Dataset`."""
    return cls.from_arrays(dataset.train_images, dataset.train_labels,
                           num_classes=dataset.num_classes, **kwargs)

  def sample_task(self, key: jax.Array) -> MLPTask:
    """No task data: runs differ by their key (theta_0 and minibatches)."""
    del key
    return MLPTask()

  def init(self, task: MLPTask, key: jax.Array):
    """Weights and biases i.i.d. N(0, init_scale^2); no model state."""
    del task
    sizes = (int(np.prod(self.images.shape[1:])),) + tuple(self.hidden_sizes) + (self.num_classes,)
    keys = jax.random.split(key, 2 * (len(sizes) - 1))
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
      params[f"layer_{i}"] = {
          "w": self.init_scale * jax.random.normal(keys[2 * i], (n_in, n_out)),
          "b": self.init_scale * jax.random.normal(keys[2 * i + 1], (n_out,)),
      }
    return params, ()

  def logits(self, params, images: jax.Array, model_state=(), train: bool = False):
    """Logits of uint8 images (B, H, W, C) and the (unchanged, empty) model state.

    Same signature as :meth:`metaopt.problems.conv.ConvFamily.logits`.
    """
    x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
    act = ACTIVATIONS[self.activation]
    n = len(params)
    for i in range(n):
      x = x @ params[f"layer_{i}"]["w"] + params[f"layer_{i}"]["b"]
      if i < n - 1:
        x = act(x)
    return x, model_state

  def loss(self, params, model_state, task: MLPTask, key: jax.Array):
    """Mean cross-entropy on a minibatch of ``batch_size`` images drawn with ``key``."""
    del task
    return minibatch_cross_entropy(self, params, model_state, key)
