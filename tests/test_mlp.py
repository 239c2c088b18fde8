import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt.problems.mlp import MLPFamily, classification_metrics

from conftest import SHARED_DATA as SHARED


def _fake_images(n=256, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
          rng.integers(0, 10, n).astype(np.int32))


def test_shapes_and_initial_loss_is_near_ln10():
  images, labels = _fake_images()
  fam = MLPFamily.from_arrays(images, labels, hidden_sizes=(20, 7), init_scale=0.01)
  params, state = fam.init(fam.sample_task(jax.random.key(0)), jax.random.key(1))
  assert jax.tree.map(jnp.shape, params) == {
      "layer_0": {"w": (784, 20), "b": (20,)}, "layer_1": {"w": (20, 7), "b": (7,)},
      "layer_2": {"w": (7, 10), "b": (10,)}}
  loss, _ = jax.jit(fam.loss)(params, state, fam.sample_task(jax.random.key(0)), jax.random.key(2))
  assert float(loss) == pytest.approx(np.log(10), abs=0.05)


def test_minibatches_are_drawn_from_the_key():
  images, labels = _fake_images()
  fam = MLPFamily.from_arrays(images, labels, init_scale=0.5, batch_size=8)
  task = fam.sample_task(jax.random.key(0))
  params, state = fam.init(task, jax.random.key(1))
  loss = jax.jit(fam.loss)
  loss_at = lambda seed: float(loss(params, state, task, jax.random.key(seed))[0])
  assert loss_at(5) == loss_at(5)
  assert loss_at(5) != loss_at(6)


def test_bad_configuration_is_rejected():
  images, labels = _fake_images(8)
  with pytest.raises(ValueError, match="activation 'swish' unknown"):
    MLPFamily.from_arrays(images, labels, activation="swish")
  with pytest.raises(ValueError, match="hidden_sizes must be positive"):
    MLPFamily.from_arrays(images, labels, hidden_sizes=(0,))
  with pytest.raises(ValueError, match=r"uint8 \(N, H, W, C\)"):
    MLPFamily.from_arrays(images.astype(np.float32), labels)


def test_classification_metrics():
  images, labels = _fake_images(64)
  fam = MLPFamily.from_arrays(images, labels, hidden_sizes=(5,), init_scale=0.0)
  params, _ = fam.init(fam.sample_task(jax.random.key(0)), jax.random.key(0))
  m = classification_metrics(fam, (jnp.asarray(images), jnp.asarray(labels)), params)
  assert float(m["test_loss"]) == pytest.approx(np.log(10), rel=1e-5)
  assert float(m["test_accuracy"]) == pytest.approx(np.mean(labels == 0))


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="original MNIST files not found")
@pytest.mark.parametrize("name", ["mnist", "mnist_long"])
def test_pretrained_mnist_rule_trains_a_fresh_base_net_in_a_users_optax_loop(name):
  if name not in metaopt.list_pretrained():
    pytest.skip(f"no shipped {name} rule")
  ds = metaopt.data.load_dataset("mnist", SHARED)
  phi, config, _ = metaopt.load_pretrained(name)
  fam = MLPFamily.from_dataset(ds, init_scale=0.01)
  params, state = fam.init(fam.sample_task(jax.random.key(0)), jax.random.key(42))
  opt = optax.chain(metaopt.learned_rule(phi, config))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, key):
    (loss, _), grads = jax.value_and_grad(fam.loss, has_aux=True)(params, state, (), key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for t in range(40):
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(jax.random.key(7), t))
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
