"""The Neural Art problem family and its feature networks, on tiny images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt.problems.art import ArtFamily, resize_images
from metaopt.problems.features import VGG16_BLOCKS, features, gram, random_features, vgg16_from_npz

NET = random_features(0, (4, 8, 8))


def _images(n, size, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_features_shapes_gram_and_determinism():
  image = jnp.asarray(_images(1, 16, 0)[0], jnp.float32) / 255
  feats = features(NET, image)
  assert [f.shape for f in feats] == [(16, 16, 4), (8, 8, 8), (4, 4, 8)]
  g = gram(feats[1])
  np.testing.assert_allclose(g, g.T, rtol=1e-6)
  assert np.all(np.linalg.eigvalsh(np.asarray(g, np.float64)) > -1e-4)   # PSD
  again = features(random_features(0, (4, 8, 8)), image)
  np.testing.assert_array_equal(feats[2], again[2])  # a pure function of the seed
  assert not np.allclose(features(random_features(1, (4, 8, 8)), image)[2], feats[2])


def test_art_loss_terms_and_descent():
  contents, style = _images(5, 16, 1), _images(1, 24, 2)[0]
  fam = ArtFamily.from_images(contents, style, NET, content_weight=1.0, style_weight=0.0,
                              tv_weight=0.0)
  key = jax.random.key(0)
  task = jax.jit(fam.sample_task)(key)
  assert any(np.array_equal(np.asarray(task.content * 255).round(), c) for c in contents)
  theta, state = fam.init(task, key)
  np.testing.assert_array_equal(theta, task.content)
  assert float(fam.loss(theta, state, task, key)[0]) == 0.0     # content loss vanishes at c
  full = ArtFamily.from_images(contents, style, NET, style_weight=1.0, tv_weight=1.0)
  loss_and_grad = jax.jit(jax.value_and_grad(lambda p: full.loss(p, (), task, key)[0]))
  f0, g = loss_and_grad(theta)
  assert f0 > 0 and np.all(np.isfinite(g)) and g.shape == (16, 16, 3)
  for _ in range(20):
    theta = theta - 0.02 * g / (jnp.abs(g).max() + 1e-12)
    f, g = loss_and_grad(theta)
  assert f < f0


def test_style_loss_is_zero_when_the_image_is_the_style():
  style = _images(1, 16, 3)[0]
  fam = ArtFamily.from_images(style[None], style, NET, content_weight=0.0, tv_weight=0.0)
  task = fam.sample_task(jax.random.key(0))
  assert float(fam.loss(task.content, (), task, None)[0]) < 1e-10


def test_resize_images_makes_rgb():
  grey = np.full((2, 10, 10), 7, np.uint8)
  rgba = np.zeros((1, 6, 6, 4), np.uint8)
  assert resize_images(grey, 4).shape == (2, 4, 4, 3) and resize_images(grey, 4).max() == 7
  assert resize_images(rgba, 12).shape == (1, 12, 12, 3)


def test_vgg16_npz_loading_and_its_errors(tmp_path):
  arrays, c_in = {}, 3
  for b, n in enumerate(VGG16_BLOCKS[:2], start=1):
    for i in range(1, n + 1):
      rng = np.random.default_rng(b * 10 + i)
      arrays[f"conv{b}_{i}_W"] = rng.normal(size=(3, 3, c_in, 2 * b)).astype(np.float32)
      arrays[f"conv{b}_{i}_b"] = np.zeros(2 * b, np.float32)
      c_in = 2 * b
  np.savez(tmp_path / "vgg.npz", **arrays)
  net = vgg16_from_npz(tmp_path / "vgg.npz", num_blocks=2)
  assert [f.shape for f in features(net, jnp.zeros((8, 8, 3)))] == [(8, 8, 2), (4, 4, 4)]
  with pytest.raises(FileNotFoundError, match="vgg16_weights.npz"):
    vgg16_from_npz(tmp_path / "missing.npz")
  arrays["conv2_1_W"] = arrays["conv2_1_W"][:, :, :1]
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=r"conv2_1_W has shape \(3, 3, 1, 4\)"):
    vgg16_from_npz(tmp_path / "bad.npz", num_blocks=2)
  with pytest.raises(ValueError, match="lacks conv3_1_W"):
    vgg16_from_npz(tmp_path / "vgg.npz", num_blocks=3)


def test_bad_art_inputs_are_rejected():
  with pytest.raises(ValueError, match="contents must be uint8"):
    ArtFamily.from_images(np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), NET)
  with pytest.raises(ValueError, match="exceed the feature network's 3 blocks"):
    ArtFamily.from_images(_images(2, 8, 0), _images(1, 8, 1)[0], NET, style_layers=(3,))
