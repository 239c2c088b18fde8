"""The learned rule inside Flax training loops (linen TrainState and nnx.Optimizer), on real
MNIST."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training.train_state import TrainState

import metaopt

from conftest import SHARED_DATA as SHARED

pytestmark = [
    pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="original MNIST files not found"),
    pytest.mark.skipif("mnist" not in metaopt.list_pretrained(), reason="no shipped MNIST rule"),
]
STEPS, BATCH = 40, 128


@pytest.fixture(scope="module")
def mnist_batches():
  ds = metaopt.data.load_dataset("mnist", SHARED)
  x = ds.train_images[: STEPS * BATCH].reshape(STEPS, BATCH, 784).astype(np.float32) / 255.0
  y = ds.train_labels[: STEPS * BATCH].reshape(STEPS, BATCH)
  return jnp.asarray(x), jnp.asarray(y)


def _tx():
  phi, config, _ = metaopt.load_pretrained("mnist")
  return optax.chain(optax.clip_by_global_norm(10.0), metaopt.learned_rule(phi, config))


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_linen_train_state_apply_gradients(mnist_batches):
  x, y = mnist_batches

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(nn.sigmoid(nn.Dense(20)(x)))

  model = MLP()
  state = TrainState.create(apply_fn=model.apply, params=model.init(jax.random.key(0), x[0]),
                            tx=_tx())

  @jax.jit
  def step(state, xb, yb):
    loss, grads = jax.value_and_grad(
        lambda p: _cross_entropy(state.apply_fn(p, xb), yb))(state.params)
    return state.apply_gradients(grads=grads), loss

  losses = []
  for t in range(STEPS):
    state, loss = step(state, x[t], y[t])
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_nnx_optimizer(mnist_batches):
  x, y = mnist_batches

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(784, 20, rngs=rngs)
      self.out = nnx.Linear(20, 10, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.sigmoid(self.hidden(x)))

  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, xb, yb):
    loss, grads = nnx.value_and_grad(lambda m: _cross_entropy(m(xb), yb))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, x[t], y[t])) for t in range(STEPS)]
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
