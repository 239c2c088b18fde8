"""Logistic (softmax) regression on flattened images: the simplest convex classifier.

Like :class:`metaopt.problems.mlp.MLPFamily` the images stay on the device as a
uint8 array and each loss draws its minibatch with the run's key.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metaopt.problems.classification import minibatch_cross_entropy


class LogisticTask(NamedTuple):
  """Problems differ only in theta_0 and minibatch stream (the run key): no task data."""


class LogisticRegressionFamily(struct.PyTreeNode):
  """Mean cross-entropy of ``softmax(x W + b)`` (plus ``l2 / 2 ||W||^2``) on image minibatches.

  Parameters: ``{"w": (H * W * C, num_classes), "b": (num_classes,)}``, theta_0 i.i.d.
  N(0, init_scale^2); pixels are scaled to [0, 1].

  Attributes:
    images: uint8 (N, H, W, C) training images.
    labels: int32 (N,) labels in [0, num_classes).
    batch_size: minibatch size.
    num_classes: output units.
    init_scale: std of theta_0.
    l2: weight decay on ``w`` (0: none).
    run_mode: ``"vmap"`` (:func:`metaopt.unroll.map_runs`).

  Example:
    >>> ds = metaopt.data.load_dataset("mnist")
    >>> fam = LogisticRegressionFamily.from_arrays(ds.train_images, ds.train_labels)
    >>> params, state = fam.init(fam.sample_task(key), key)
  """

  images: jax.Array
  labels: jax.Array
  batch_size: int = struct.field(pytree_node=False, default=128)
  num_classes: int = struct.field(pytree_node=False, default=10)
  init_scale: float = struct.field(pytree_node=False, default=0.01)
  l2: float = struct.field(pytree_node=False, default=0.0)
  run_mode: str = struct.field(pytree_node=False, default="vmap")

  @classmethod
  def from_arrays(cls, images, labels, **kwargs) -> LogisticRegressionFamily:
    """Build from uint8 images (N, H, W, C) and int labels, validating them first."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"LogisticRegressionFamily.images must be uint8 (N, H, W, C), got "
                       f"{images.dtype} {images.shape}")
    if int(kwargs.get("batch_size", 128)) <= 0 or float(kwargs.get("l2", 0.0)) < 0:
      raise ValueError(f"LogisticRegressionFamily needs batch_size > 0 and l2 >= 0, got {kwargs}")
    return cls(jnp.asarray(images), jnp.asarray(labels, jnp.int32), **kwargs)

  def sample_task(self, key: jax.Array) -> LogisticTask:
    """No task data: runs differ by their key (theta_0 and minibatches)."""
    del key
    return LogisticTask()

  def init(self, task: LogisticTask, key: jax.Array):
    """w, b i.i.d. N(0, init_scale^2); no model state."""
    del task
    k_w, k_b = jax.random.split(key)
    dim = int(np.prod(self.images.shape[1:]))
    return {"w": self.init_scale * jax.random.normal(k_w, (dim, self.num_classes)),
            "b": self.init_scale * jax.random.normal(k_b, (self.num_classes,))}, ()

  def logits(self, params, images: jax.Array, model_state=(), train: bool = False):
    """Logits of uint8 images (B, H, W, C) (signature of :meth:`MLPFamily.logits`)."""
    del train
    x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
    return x @ params["w"] + params["b"], model_state

  def loss(self, params, model_state, task: LogisticTask, key: jax.Array):
    """Mean cross-entropy on a minibatch drawn with ``key``, plus the L2 term."""
    del task
    loss, model_state = minibatch_cross_entropy(self, params, model_state, key)
    return loss + 0.5 * self.l2 * jnp.sum(jnp.square(params["w"])), model_state
