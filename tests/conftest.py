"""Shared fixtures: tiny problem families and a fresh phi."""

import atexit
import os
import pathlib
import shutil
import tempfile
from typing import NamedTuple

# One persistent compilation cache for the test session, shared by the pytest workers and by the
# subprocesses that tests start (they inherit the environment): a program that several of them
# compile is compiled once. The process that creates the folder removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="metaopt-tests-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # after the cache settings, which JAX reads at import
import jax.numpy as jnp
import pytest
from flax import struct

import metaopt
from metaopt.data import DATA_DIR_ENV

# The original data files: $METAOPT_DATA_DIR, else ../shared/data beside the checkout.
SHARED_DATA = pathlib.Path(os.environ.get(DATA_DIR_ENV)
                           or pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")


class ScalarTask(NamedTuple):
  scale: jax.Array


class ScalarQuadratic(struct.PyTreeNode):
  """f(theta) = scale * theta^2 with theta_0 = 1 (a problem whose optimal SGD rate is known)."""

  run_mode: str = struct.field(pytree_node=False, default="vmap")

  def sample_task(self, key):
    del key
    return ScalarTask(jnp.float32(1.0))

  def init(self, task, key):
    del task, key
    return jnp.float32(1.0), ()

  def loss(self, params, model_state, task, key):
    del key
    return task.scale * params ** 2, model_state


@pytest.fixture
def scalar_family():
  return ScalarQuadratic()


@pytest.fixture
def phi():
  return metaopt.init_meta_params(metaopt.LSTMConfig(), jax.random.key(0))
