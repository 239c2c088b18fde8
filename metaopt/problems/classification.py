"""What every image-classification family shares: minibatch cross-entropy and test metrics.

A classification family holds device-resident ``images`` / ``labels``, a
``batch_size`` and ``logits(params, images, model_state, train) -> (logits,
model_state)`` (:class:`metaopt.problems.mlp.MLPFamily`,
:class:`metaopt.problems.conv.ConvFamily`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of logits (B, K) against integer labels (B,)."""
  return jnp.mean(jax.nn.logsumexp(logits, -1)
                  - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0])


def minibatch_cross_entropy(family, params, model_state, key: jax.Array):
  """Training-mode loss on ``family.batch_size`` images drawn with ``key`` (inside jit/scan).

  Returns:
    ``(loss, new_model_state)``.
  """
  idx = jax.random.randint(key, (family.batch_size,), 0, family.images.shape[0])
  logits, model_state = family.logits(params, family.images[idx], model_state, train=True)
  return cross_entropy(logits, family.labels[idx]), model_state


def classification_metrics(family, test_data: tuple[jax.Array, jax.Array], params,
                           model_state=()) -> dict:
  """Test-set loss and accuracy of one trained net (for ``ExperimentConfig.test_metrics``).

  Uses evaluation mode (e.g. batch norm with the run's running statistics).

  Args:
    family: the family whose architecture ``params`` belong to.
    test_data: ``(images, labels)``: uint8 (N, H, W, C) and int (N,).
    params: the trained parameters.
    model_state: the run's final model state (batch-norm statistics), if any.

  Returns:
    ``{"test_loss": mean cross-entropy, "test_accuracy": fraction correct}``.
  """
  images, labels = test_data
  logits, _ = family.logits(params, images, model_state, train=False)
  return {"test_loss": cross_entropy(logits, labels),
          "test_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
