"""Convolutional feature networks for the Neural Art problems (content and style losses).

Two sources:

* :func:`random_features`: a fixed, seeded stack of random-filter 3x3
  convolutions (ReLU, 2x2 average pooling between layers). Random convolutional
  features support texture synthesis and style transfer (Ustyuzhaninov et al.
  2016, "Texture synthesis using shallow convolutional networks with random
  filters"); this is the offline default.
* :func:`vgg16_from_npz`: the convolutional layers of an ImageNet-trained VGG-16
  from a user-supplied ``.npz`` file in the widely used layout of
  ``vgg16_weights.npz`` (https://www.cs.toronto.edu/~frossard/vgg16/): arrays
  ``conv{b}_{i}_W`` of shape (3, 3, C_in, C_out) (HWIO) and ``conv{b}_{i}_b``
  of shape (C_out,), blocks 1-5. Inputs are RGB in [0, 1]; the ImageNet mean is
  subtracted inside (x 255, as that network expects).

A feature network is a :class:`FeatureNet`: a tuple of blocks, each a tuple of
(kernel, bias) convolutions followed by ReLU; blocks are separated by 2x2
average pooling; the output of every block is one feature layer.
"""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

VGG16_BLOCKS = (2, 2, 3, 3, 3)
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)


class FeatureNet(struct.PyTreeNode):
  """Conv blocks ``((kernel HWIO, bias), ...)`` per block; ``input_scale``/``input_mean`` map
  [0, 1] RGB."""

  blocks: tuple
  input_scale: float = struct.field(pytree_node=False, default=1.0)
  input_mean: tuple = struct.field(pytree_node=False, default=(0.0, 0.0, 0.0))
  name: str = struct.field(pytree_node=False, default="random")


def random_features(seed: int = 0, channels: tuple[int, ...] = (32, 64, 128)) -> FeatureNet:
  """A fixed random-filter conv net: one 3x3 conv (He-normal, zero bias) per block.

  Args:
    seed: the filters' seed (the network is a pure function of it).
    channels: output channels of each block (one feature layer per block).

  Example:
    >>> net = random_features(0)
    >>> [f.shape for f in features(net, jnp.zeros((64, 64, 3)))]
    [(64, 64, 32), (32, 32, 64), (16, 16, 128)]
  """
  key = jax.random.key(seed)
  blocks, c_in = [], 3
  for i, c_out in enumerate(channels):
    kernel = (jax.random.normal(jax.random.fold_in(key, i), (3, 3, c_in, c_out))
              * np.sqrt(2.0 / (9 * c_in)))
    blocks.append(((kernel, jnp.zeros((c_out,))),))
    c_in = c_out
  return FeatureNet(tuple(blocks), name=f"random(seed={seed}, channels={tuple(channels)})")


def vgg16_from_npz(path: str | os.PathLike, num_blocks: int = 4) -> FeatureNet:
  """VGG-16's first ``num_blocks`` conv blocks from a ``vgg16_weights.npz``-style file.

  Raises:
    FileNotFoundError / ValueError naming the missing file, array or wrong shape.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no VGG-16 weights at {path}; download vgg16_weights.npz from "
                            "https://www.cs.toronto.edu/~frossard/vgg16/ (or pass another file "
                            "with arrays conv{b}_{i}_W (3, 3, C_in, C_out) and conv{b}_{i}_b)")
  arrays = np.load(path)
  blocks, c_in = [], 3
  for b, n in enumerate(VGG16_BLOCKS[:num_blocks], start=1):
    convs = []
    for i in range(1, n + 1):
      w_name, b_name = f"conv{b}_{i}_W", f"conv{b}_{i}_b"
      if w_name not in arrays or b_name not in arrays:
        raise ValueError(f"{path} lacks {w_name} / {b_name} (VGG-16 layout expected)")
      w, bias = np.asarray(arrays[w_name], np.float32), np.asarray(arrays[b_name], np.float32)
      if w.ndim != 4 or w.shape[:3] != (3, 3, c_in) or bias.shape != (w.shape[3],):
        raise ValueError(f"{path}: {w_name} has shape {w.shape} and {b_name} {bias.shape}; "
                         f"expected (3, 3, {c_in}, C) and (C,)")
      convs.append((jnp.asarray(w), jnp.asarray(bias)))
      c_in = w.shape[3]
    blocks.append(tuple(convs))
  return FeatureNet(tuple(blocks), 255.0, IMAGENET_MEAN_RGB,
                    f"vgg16({path.name}, {num_blocks} blocks)")


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  y = jax.lax.conv_general_dilated(x[None], kernel, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
  return jax.nn.relu(y + bias)


def _avg_pool(x: jax.Array) -> jax.Array:
  h, w, c = x.shape
  return x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


def features(net: FeatureNet, image: jax.Array) -> list[jax.Array]:
  """The output of every block for one (H, W, 3) RGB image in [0, 1].

  Returns:
    A list of (H_l, W_l, C_l) arrays, one per block.
  """
  x = image * net.input_scale - jnp.asarray(net.input_mean, image.dtype)
  out = []
  for i, block in enumerate(net.blocks):
    if i:
      x = _avg_pool(x)
    for kernel, bias in block:
      x = _conv(x, kernel, bias)
    out.append(x)
  return out


def gram(feature: jax.Array) -> jax.Array:
  """Gram matrix of one feature layer, normalized by its number of positions: (C, C)."""
  f = feature.reshape(-1, feature.shape[-1])
  return f.T @ f / f.shape[0]
