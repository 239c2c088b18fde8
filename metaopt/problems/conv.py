"""Small convolutional nets with batch norm on image data (the paper's section 3.3, CIFAR-10).

The paper's (and the official code's) net: three blocks of convolution (16
channels, 5x5, stride 1, SAME) -> ReLU -> 2x2 max-pooling -> batch norm, then a
fully connected layer of 32 units -> batch norm -> ReLU, then a linear layer
to the class logits; cross-entropy on minibatches drawn inside the unroll.

**Batch-norm statistics are model state, not parameters.** During an unroll
the loss normalizes with the minibatch's own statistics (training mode) and
returns updated running averages (``momentum`` EMA, gradients stopped) as the
new model state, which :func:`metaopt.unroll.unroll` carries from step to step
in ``UnrollState.model_state``; only evaluation of a trained net
(:meth:`ConvFamily.logits` with ``train=False``) uses the running averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metaopt.problems.classification import minibatch_cross_entropy

BN_EPSILON = 1e-5


class ConvTask(NamedTuple):
  """Conv problems differ only in theta_0 and minibatch stream (the run key): no task data."""


def select_classes(images: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Keep the images of ``classes`` and relabel them 0..len(classes)-1 in that order.

  Example:
    >>> x, y = select_classes(images, labels, (3, 5))   # a 2-class problem: cat=0, dog=1
  """
  if classes is None:
    return images, labels
  classes = [int(c) for c in classes]
  if len(set(classes)) != len(classes) or len(classes) < 2:
    raise ValueError(f"classes must be at least two distinct labels, got {classes}")
  missing = [c for c in classes if not np.any(labels == c)]
  if missing:
    raise ValueError(f"classes {missing} have no images "
                     f"(labels present: {sorted(set(labels.tolist()))})")
  keep = np.isin(labels, classes)
  remap = np.full(int(max(labels.max(), max(classes))) + 1, -1, np.int32)
  remap[classes] = np.arange(len(classes), dtype=np.int32)
  return images[keep], remap[labels[keep]]


def _batch_norm(x, scale, offset, stats, train: bool, momentum: float):
  """Normalize over all but the channel axis; return the output and the new running stats."""
  axes = tuple(range(x.ndim - 1))
  if train:
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    new_stats = jax.tree.map(
        lambda old, new: momentum * old + (1 - momentum) * jax.lax.stop_gradient(new),
        stats, {"mean": mean, "var": var})
  else:
    mean, var, new_stats = stats["mean"], stats["var"], stats
  return (x - mean) * jax.lax.rsqrt(var + BN_EPSILON) * scale + offset, new_stats


_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMS)


@jax.custom_vjp
def conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 SAME convolution, NHWC x HWIO (odd kernel sizes), with a hand-written VJP.

  Both gradients are written as forward convolutions in the canonical NHWC/HWIO
  layout. XLA:CPU runs autodiff's kernel-gradient convolution ~25x slower inside
  a ``while`` loop (i.e. in every ``lax.scan`` unroll) than outside it; this
  form runs at full speed in both.
  """
  return _conv(x, kernel, "SAME")


def _conv2d_same_fwd(x, kernel):
  return conv2d_same(x, kernel), (x, kernel)


def _conv2d_same_bwd(residuals, dy):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  dx = _conv(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), "SAME")
  # dk[i, j, c, o] = sum_{b, h, w} x_pad[b, h + i, w + j, c] dy[b, h, w, o]: a convolution
  # with channels as the batch, the minibatch as the contracted feature and dy as the window.
  dk = _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3),
             ((kh // 2, kh // 2), (kw // 2, kw // 2)))
  return dx, dk.transpose(1, 2, 0, 3)


conv2d_same.defvjp(_conv2d_same_fwd, _conv2d_same_bwd)


def _max_pool(x):
  """2x2 max-pooling, stride 2 (as a reshape + max: its gradient is ~3x cheaper on CPU
  than ``lax.reduce_window``'s select-and-scatter)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ConvFamily(struct.PyTreeNode):
  """Cross-entropy of the paper's CIFAR conv net on a device-resident image set.

  Parameters (the paths the per-group rule matches): ``conv_<i>`` holds the
  i-th block's ``kernel`` (5, 5, C_in, C), ``bias``, ``bn_scale``, ``bn_offset``;
  ``fc`` holds ``kernel``, ``bn_scale``, ``bn_offset`` (no bias: batch norm's
  offset plays its role); ``out`` holds ``kernel``, ``bias``. theta_0: kernels
  i.i.d. N(0, 1 / fan_in), biases and offsets 0, scales 1. Model state:
  running ``mean`` / ``var`` of every batch norm (``conv_<i>``, ``fc``).

  Attributes:
    images: uint8 (N, H, W, C) training images.
    labels: int32 (N,) labels in [0, num_classes).
    channel_mean, channel_std: per-channel normalization of the images (C,).
    channels: output channels of the conv blocks (paper: (16, 16, 16)).
    kernel_size: convolution window (paper: 5).
    fc_size: units of the fully connected layer (paper: 32).
    batch_size: minibatch size (paper: 128).
    num_classes: output units.
    bn_momentum: running-average momentum of the batch-norm statistics.
    batch_norm: True (paper): batch norm as above; False: no batch norm, no model state
      (``{}``), and the fully connected layer gets a ``bias``.
    run_mode: ``"map"``: runs go one after another in a loop (vmapping runs turns
      their convolutions into grouped ones, which are slow on CPU).

  Example:
    >>> ds = metaopt.data.load_dataset("cifar10")
    >>> fam = ConvFamily.from_arrays(ds.train_images, ds.train_labels, classes=(0, 1))
    >>> params, bn_state = fam.init(fam.sample_task(key), key)
    >>> loss, bn_state = fam.loss(params, bn_state, fam.sample_task(key), key)
  """

  images: jax.Array
  labels: jax.Array
  channel_mean: jax.Array
  channel_std: jax.Array
  channels: tuple[int, ...] = struct.field(pytree_node=False, default=(16, 16, 16))
  kernel_size: int = struct.field(pytree_node=False, default=5)
  fc_size: int = struct.field(pytree_node=False, default=32)
  batch_size: int = struct.field(pytree_node=False, default=128)
  num_classes: int = struct.field(pytree_node=False, default=10)
  bn_momentum: float = struct.field(pytree_node=False, default=0.9)
  run_mode: str = struct.field(pytree_node=False, default="map")
  batch_norm: bool = struct.field(pytree_node=False, default=True)

  @classmethod
  def from_arrays(cls, images, labels, classes: Sequence[int] | None = None,
                  **kwargs) -> ConvFamily:
    """Build from uint8 images (N, H, W, C) and labels, optionally keeping only ``classes``.

    The normalization statistics are computed from ``images`` (after the class
    selection) unless ``channel_mean`` / ``channel_std`` are given.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int32)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"ConvFamily.images must be uint8 (N, H, W, C), got {images.dtype} "
                       f"{images.shape}")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"ConvFamily: {len(labels)} labels for {len(images)} images")
    images, labels = select_classes(images, labels, classes)
    if classes is not None:
      kwargs["num_classes"] = len(classes)
    channels = tuple(int(c) for c in kwargs.pop("channels", (16, 16, 16)))
    if not channels or min(channels) <= 0:
      raise ValueError(f"ConvFamily.channels must be non-empty and positive, got {channels}")
    if int(kwargs.get("kernel_size", 5)) % 2 == 0:
      raise ValueError("ConvFamily.kernel_size must be odd (SAME padding), "
                       f"got {kwargs['kernel_size']}")
    for name in ("kernel_size", "fc_size", "batch_size", "num_classes"):
      if name in kwargs and int(kwargs[name]) <= 0:
        raise ValueError(f"ConvFamily.{name} must be positive, got {kwargs[name]}")
    blocks = 2 ** len(channels)
    if images.shape[1] % blocks or images.shape[2] % blocks:
      raise ValueError(f"ConvFamily: {len(channels)} 2x2 poolings need image sizes divisible by "
                       f"{blocks}, got {images.shape[1:3]}")
    if labels.size and (labels.min() < 0 or labels.max() >= kwargs.get("num_classes", 10)):
      raise ValueError(f"ConvFamily: labels span [{labels.min()}, {labels.max()}], outside "
                       f"[0, {kwargs.get('num_classes', 10) - 1}]")
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = kwargs.pop("channel_mean", pixels.mean(0))
    std = kwargs.pop("channel_std", pixels.std(0) + 1e-8)
    return cls(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(mean, jnp.float32),
               jnp.asarray(std, jnp.float32), channels=channels, **kwargs)

  def sample_task(self, key: jax.Array) -> ConvTask:
    """No task data: runs differ by their key (theta_0 and minibatches)."""
    del key
    return ConvTask()

  def init(self, task: ConvTask, key: jax.Array):
    """theta_0 (kernels N(0, 1/fan_in), biases 0, BN scale 1 / offset 0) and fresh BN stats."""
    del task
    k = self.kernel_size
    keys = jax.random.split(key, len(self.channels) + 2)
    params, state = {}, {}
    c_in = self.images.shape[-1]

    def bn(name, c):
      if not self.batch_norm:
        return {}
      state[name] = {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))}
      return {"bn_scale": jnp.ones((c,)), "bn_offset": jnp.zeros((c,))}

    for i, c in enumerate(self.channels):
      fan_in = k * k * c_in
      bn_params = bn(f"conv_{i}", c)
      kernel = jax.random.normal(keys[i], (k, k, c_in, c)) / np.sqrt(fan_in)
      params[f"conv_{i}"] = {"kernel": kernel, "bias": jnp.zeros((c,)), **bn_params}
      c_in = c
    h, w = self.images.shape[1:3]
    for _ in self.channels:
      h, w = h // 2, w // 2
    flat = h * w * c_in
    bn_params = bn("fc", self.fc_size) if self.batch_norm else {"bias": jnp.zeros((self.fc_size,))}
    params["fc"] = {"kernel": jax.random.normal(keys[-2], (flat, self.fc_size)) / np.sqrt(flat),
                    **bn_params}
    params["out"] = {
        "kernel": (jax.random.normal(keys[-1], (self.fc_size, self.num_classes))
                   / np.sqrt(self.fc_size)),
        "bias": jnp.zeros((self.num_classes,))}
    return params, state

  def logits(self, params, images: jax.Array, model_state, train: bool = False):
    """Logits of uint8 images (B, H, W, C) and the new BN state.

    ``train=True`` normalizes with the batch's statistics and updates the running
    averages; ``train=False`` (evaluation) uses the running averages.
    """
    x = (images.astype(jnp.float32) / 255.0 - self.channel_mean) / self.channel_std
    new_state = {}
    for i in range(len(self.channels)):
      p = params[f"conv_{i}"]
      x = conv2d_same(x, p["kernel"]) + p["bias"]
      x = _max_pool(jax.nn.relu(x))
      if self.batch_norm:
        x, new_state[f"conv_{i}"] = _batch_norm(x, p["bn_scale"], p["bn_offset"],
                                                model_state[f"conv_{i}"], train, self.bn_momentum)
    x = x.reshape(x.shape[0], -1) @ params["fc"]["kernel"]
    if self.batch_norm:
      x, new_state["fc"] = _batch_norm(x, params["fc"]["bn_scale"], params["fc"]["bn_offset"],
                                       model_state["fc"], train, self.bn_momentum)
    else:
      x = x + params["fc"]["bias"]
    x = jax.nn.relu(x)
    return x @ params["out"]["kernel"] + params["out"]["bias"], new_state

  def loss(self, params, model_state, task: ConvTask, key: jax.Array):
    """Mean cross-entropy on a minibatch drawn with ``key`` (training-mode batch norm)."""
    del task
    return minibatch_cross_entropy(self, params, model_state, key)


CONV_GROUPS = ((r"\['conv_\d+'\]", "conv"),)
"""Parameter-path patterns of the paper's two-LSTM CIFAR optimizer: everything in a
convolution block (kernel, bias and that block's batch-norm scale/offset) -> ``conv``;
the rest (fully connected layer, its batch norm, output layer) -> the default ``fc``."""
