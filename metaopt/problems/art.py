"""Neural Art (the paper's section 3.4): style transfer as a family of optimization problems.

Each problem is a content image c; with a fixed style image s the loss over an
image theta (H, W, 3, RGB in [0, 1], the optimizee's parameters) is

.. math::
   f(\\theta) = \\alpha \\sum_{l \\in C} \\frac{\\lVert F_l(\\theta) - F_l(c) \\rVert^2}
                                     {\\lVert F_l(c) \\rVert^2}
            + \\beta \\sum_{l \\in S} \\frac{\\lVert G_l(\\theta) - G_l(s) \\rVert^2}
                                     {\\lVert G_l(s) \\rVert^2}
            + \\gamma \\, \\mathrm{TV}(\\theta)

(Gatys et al.: content features F_l, Gram matrices G_l of a conv feature
network, :mod:`metaopt.problems.features`; each term normalized by its target so
the weights are scale-free; TV is the mean squared difference of neighbouring
pixels). theta_0 is the content image itself (as in the paper's setup, the
optimizer moves it towards the style); the loss is deterministic (the key is unused).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metaopt.problems.features import FeatureNet, features, gram


class ArtTask(NamedTuple):
  """One content image (float32 in [0, 1]) and its content-layer features."""

  content: jax.Array
  content_features: tuple


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """A batch of uint8 images (N, h, w[, C]) -> uint8 (N, size, size, 3), bilinear.

  Grey images become RGB; an alpha channel is dropped.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  images = images[..., :3]
  out = jax.image.resize(jnp.asarray(images, jnp.float32), (len(images), size, size, 3), "bilinear")
  return np.asarray(jnp.clip(jnp.round(out), 0, 255), np.uint8)


class ArtFamily(struct.PyTreeNode):
  """Style transfer of one style onto content images drawn from a set.

  Attributes:
    contents: uint8 (N, H, W, 3) content images (the problem set).
    style_grams: the style image's Gram matrix at each style layer.
    net: the feature network.
    content_layers, style_layers: indices of the network's blocks used for each loss.
    content_weight, style_weight, tv_weight: alpha, beta, gamma.
    run_mode: how a batch of runs is mapped (:func:`metaopt.unroll.map_runs`).

  Example:
    >>> fam = ArtFamily.from_images(contents, style, random_features(0))
    >>> theta, _ = fam.init(fam.sample_task(key), key)   # the content image
  """

  contents: jax.Array
  style_grams: tuple
  net: FeatureNet
  content_layers: tuple[int, ...] = struct.field(pytree_node=False, default=(2,))
  style_layers: tuple[int, ...] = struct.field(pytree_node=False, default=(0, 1, 2))
  content_weight: float = struct.field(pytree_node=False, default=1.0)
  style_weight: float = struct.field(pytree_node=False, default=1.0)
  tv_weight: float = struct.field(pytree_node=False, default=1.0)
  run_mode: str = struct.field(pytree_node=False, default="vmap")

  @classmethod
  def from_images(cls, contents: np.ndarray, style: np.ndarray, net: FeatureNet,
                  size: int | None = None, **kwargs) -> ArtFamily:
    """Contents and style as uint8 images; ``size`` resizes both to size x size first."""
    contents, style = np.asarray(contents), np.asarray(style)
    if contents.dtype != np.uint8 or contents.ndim != 4 or contents.shape[-1] != 3:
      raise ValueError(f"ArtFamily contents must be uint8 (N, H, W, 3), got {contents.dtype} "
                       f"{contents.shape}")
    if style.dtype != np.uint8 or style.ndim not in (2, 3):
      raise ValueError(f"ArtFamily style must be a uint8 (H, W[, C]) image, got {style.dtype} "
                       f"{style.shape}")
    if size is not None:
      contents = resize_images(contents, size)
    style = resize_images(style[None], size or contents.shape[1])[0]
    layers = set(kwargs.get("content_layers", (2,))) | set(kwargs.get("style_layers", (0, 1, 2)))
    if max(layers) >= len(net.blocks):
      raise ValueError(f"ArtFamily layers {sorted(layers)} exceed the feature network's "
                       f"{len(net.blocks)} blocks")
    style_layers = kwargs.get("style_layers", (0, 1, 2))
    feats = features(net, jnp.asarray(style, jnp.float32) / 255.0)
    grams = tuple(gram(feats[layer]) for layer in style_layers)
    return cls(jnp.asarray(contents), grams, net, **kwargs)

  def sample_task(self, key: jax.Array) -> ArtTask:
    """A content image drawn uniformly from the set, with its content features."""
    image = self.contents[jax.random.randint(key, (), 0, self.contents.shape[0])]
    image = image.astype(jnp.float32) / 255.0
    feats = features(self.net, image)
    return ArtTask(image, tuple(feats[layer] for layer in self.content_layers))

  def init(self, task: ArtTask, key: jax.Array):
    """theta_0 = the content image; no model state."""
    del key
    return task.content, ()

  def loss(self, params, model_state, task: ArtTask, key: jax.Array):
    """alpha * content + beta * style + gamma * TV (see the module docstring)."""
    del key
    feats = features(self.net, params)
    content = sum(jnp.sum(jnp.square(feats[layer] - t)) / jnp.sum(jnp.square(t))
                  for layer, t in zip(self.content_layers, task.content_features))
    style = sum(jnp.sum(jnp.square(gram(feats[layer]) - g)) / jnp.sum(jnp.square(g))
                for layer, g in zip(self.style_layers, self.style_grams))
    tv = (jnp.mean(jnp.square(params[1:] - params[:-1]))
          + jnp.mean(jnp.square(params[:, 1:] - params[:, :-1])))
    return (self.content_weight * content + self.style_weight * style
            + self.tv_weight * tv), model_state
