"""The task suite: many problem types and sizes, split into meta-training and held-out tasks.

**Task types** (families of the usual protocol; a suite holds several fixed-size instances
per type, their sizes drawn once from ``np.random.default_rng(seed)``, :func:`suite_specs`):
meta-training types ``mlp`` (image MLP classifiers, widths 8-128, depth 1-3, sigmoid / tanh /
ReLU / GELU, 8x8 and full resolution), ``logistic`` (softmax regression on images),
``rosenbrock`` (n-dimensional, random valley and start), ``charlm`` (GRU character LM on the
standard library's sources); held-out types ``autoencoder`` (MLP, squared error), ``conv``
(small conv nets with and without batch norm), ``quadratic`` (varied dimension, conditioning
and distance to the optimum).

**Split.** ``meta_train``: meta-training types on MNIST and CIFAR-10. ``held_out_type``: every
instance of a held-out type (never seen in meta-training, whatever its data).
``held_out_data``: meta-training types on a held-out data set (Fashion-MNIST, only used at
test time). No type is in both ``meta_train`` and ``held_out_type``.

**Normalization** (``SuiteTask.normalization == "log_relative"``): losses differ by orders of
magnitude across types (Rosenbrock starts near 10^3, an autoencoder near 10^-1,
cross-entropies near 2.3), so summing raw losses lets the largest-scale task dominate. A run's
curve is scored as ``log f_t - log f_0`` (:func:`normalized_log_loss`): invariant to rescaling a
task's loss, 0 at the start of every run, and equal progress *factors* count the same on every
task (10x lower is -2.3 everywhere); ``f_t / f_0`` without the log would flatten the good runs
near 0 and let a diverging run dominate. theta_0 does not depend on the rule, so ``log f_0``
is a constant and the meta-gradient is that of ``Objective(loss="log_loss")``: meta-train with
that objective; this helper makes the values comparable across tasks (reporting, validation,
averages over the suite).

**Augmentation.** :meth:`SuiteTask.training_family` wraps a task in
:class:`metaopt.problems.augment.AugmentedFamily` (random per-parameter scale
``exp(U[-s, s])`` from the same starting point), so the learned rule cannot memorize one
problem's parameter scales; evaluate on the plain ``family``.

Example:
  >>> suite = make_suite(seed=0)
  >>> families = [t.training_family() for t in suite.split(META_TRAIN)]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.problems.augment import AugmentedFamily
from metaopt.problems.autoencoder import AutoencoderFamily
from metaopt.problems.charlm import CharLMFamily, encode, stdlib_text
from metaopt.problems.conv import ConvFamily
from metaopt.problems.logistic import LogisticRegressionFamily
from metaopt.problems.mlp import MLPFamily
from metaopt.problems.quadratic import QuadraticFamily
from metaopt.problems.rosenbrock import RosenbrockFamily
from metaopt.problems.suite_specs import (
  HELD_OUT_DATA,
  HELD_OUT_DATASETS,
  HELD_OUT_TYPE,
  HELD_OUT_TYPES,
  META_TRAIN,
  PARAM_BUDGET,
  SPLITS,
  TRAIN_TYPES,
  TaskSpec,
  suite_specs,
)

__all__ = ["HELD_OUT_DATA", "HELD_OUT_DATASETS", "HELD_OUT_TYPE", "HELD_OUT_TYPES", "META_TRAIN",
           "PARAM_BUDGET", "SPLITS", "Suite", "SuiteTask", "TRAIN_TYPES", "Task", "TaskSpec",
           "initial_loss", "make_suite", "normalized_log_loss", "num_params", "suite_specs"]


@dataclasses.dataclass(frozen=True, eq=False)
class SuiteTask:
  """A suite entry: name, task type, family, data set (and resolution), split, normalization."""

  name: str
  task_type: str
  family: Any
  dataset: str | None
  resolution: int | None
  split: str
  normalization: str = "log_relative"

  def training_family(self, max_log_scale: float = 1.0, convex_prob: float = 0.0):
    """The family for meta-training: randomly reparametrized (per-parameter scale
    ``exp(U[-max_log_scale, max_log_scale])``, :class:`AugmentedFamily`); 0 and 0: plain."""
    if max_log_scale == 0 and convex_prob == 0:
      return self.family
    return AugmentedFamily(self.family, max_log_scale=max_log_scale, convex_prob=convex_prob)

  @property
  def num_params(self) -> int:
    """Parameters of one problem of this task."""
    return num_params(self.family)


Task = SuiteTask


@dataclasses.dataclass(frozen=True)
class Suite:
  """The instances of :func:`make_suite` and their split."""

  tasks: tuple[SuiteTask, ...]
  seed: int
  quick: bool

  def split(self, *splits: str) -> tuple[SuiteTask, ...]:
    """The tasks in any of ``splits`` (e.g. ``suite.split(HELD_OUT_TYPE, HELD_OUT_DATA)``)."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
      raise ValueError(f"unknown splits {sorted(unknown)}; expected some of {SPLITS}")
    return tuple(t for t in self.tasks if t.split in splits)

  def task_types(self, *splits: str) -> set[str]:
    """The task types present in ``splits``."""
    return {t.task_type for t in self.split(*splits)}

  def __getitem__(self, name: str) -> SuiteTask:
    for t in self.tasks:
      if t.name == name:
        return t
    raise KeyError(name)

  def __iter__(self):
    return iter(self.tasks)

  def __len__(self) -> int:
    return len(self.tasks)


def num_params(family) -> int:
  """Number of optimized parameters of one problem of ``family`` (from shapes only)."""
  key = jax.random.key(0)
  shapes = jax.eval_shape(lambda: family.init(family.sample_task(key), key)[0])
  return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))


def normalized_log_loss(losses, floor: float = 1e-8) -> jax.Array:
  """Per-step terms ``log f_t - log f_0`` of loss curves (..., T + 1) whose step 0 is f_0.

  Losses below ``floor * f_0`` count as ``floor * f_0`` (a run that reaches 0 gives
  ``log floor``, not -inf). Losses must be >= 0, as every suite task's are.

  Example:
    >>> curves, _ = metaopt.loss_curves(optax.adam(1e-2), fam, tasks, keys, 100)
    >>> score = normalized_log_loss(curves)[:, 1:].mean()
  """
  losses = jnp.asarray(losses)
  f0 = jnp.maximum(losses[..., :1], jnp.finfo(losses.dtype).tiny)
  return jnp.log(jnp.maximum(losses, floor * f0)) - jnp.log(f0)


def initial_loss(family, task, key: jax.Array, num_batches: int = 8) -> jax.Array:
  """f(theta_0) of a run started with ``key``, averaged over ``num_batches`` minibatches."""
  params, state = family.init(task, key)
  keys = jax.random.split(jax.random.fold_in(key, 1), num_batches)
  return jnp.mean(jax.vmap(lambda k: family.loss(params, state, task, k)[0])(keys))


class _Data:
  """Loads each data set once and keeps one device copy per (data set, resolution)."""

  def __init__(self, data_dir, datasets, max_images):
    self.data_dir, self.datasets, self.max_images = data_dir, dict(datasets or {}), max_images
    self.cache, self.texts = {}, {}

  def images(self, name: str, resolution: int | None):
    if (name, resolution) not in self.cache:
      from metaopt.data import downsample, load_dataset
      if name not in self.datasets:
        self.datasets[name] = load_dataset(name, self.data_dir)
      ds = self.datasets[name]
      x, y = ds.train_images[:self.max_images], ds.train_labels[:self.max_images]
      x = downsample(x, resolution) if resolution else x
      pixels = x.reshape(-1, x.shape[-1])
      mean = np.mean(pixels, 0, dtype=np.float64) / 255
      var = sum(np.sum(np.square(c / 255 - mean), 0) for c in np.array_split(pixels, 64))
      self.cache[name, resolution] = (jnp.asarray(x), jnp.asarray(y, jnp.int32), ds.num_classes,
                                      jnp.asarray(mean, jnp.float32),
                                      jnp.asarray(np.sqrt(var / len(pixels)) + 1e-8, jnp.float32))
    return self.cache[name, resolution]

  def tokens(self, max_bytes: int):
    if max_bytes not in self.texts:
      self.texts[max_bytes] = jnp.asarray(encode(stdlib_text(max_bytes)))
    return self.texts[max_bytes]


def _build(spec: TaskSpec, data: _Data):
  o = dict(spec.options)
  if spec.task_type == "quadratic":
    return QuadraticFamily(**o)
  if spec.task_type == "rosenbrock":
    return RosenbrockFamily(**o)
  if spec.task_type == "charlm":
    return CharLMFamily(data.tokens(o.pop("max_bytes")), **o)
  x, y, k, mean, std = data.images(spec.dataset, spec.resolution)
  if spec.task_type == "mlp":
    return MLPFamily(x, y, num_classes=k, **o)
  if spec.task_type == "logistic":
    return LogisticRegressionFamily(x, y, num_classes=k, **o)
  if spec.task_type == "autoencoder":
    return AutoencoderFamily(x, **o)
  if spec.task_type == "conv":
    return ConvFamily(x, y, mean, std, num_classes=k, **o)
  raise ValueError(f"unknown task type {spec.task_type!r}")


def make_suite(data_dir=None, seed: int = 0, quick: bool = False, datasets=None,
               max_images: int | None = None) -> Suite:
  """Build the suite's families (sizes from :func:`suite_specs`) on their data.

  Args:
    data_dir: folder of the original data files (default ``$METAOPT_DATA_DIR``).
    seed: draws the instances' sizes.
    quick: tiny instances on 8x8 images, at most 2048 training images each (for tests).
    datasets: ``{name: metaopt.data.Dataset}`` to use instead of loading (e.g. fakes).
    max_images: keep the first ``max_images`` training images of every data set.

  Returns:
    A :class:`Suite`; every family keeps its training images on the device, shared by
    the instances on the same data set and resolution.
  """
  if max_images is None and quick:
    max_images = 2048
  data = _Data(data_dir, datasets, max_images)
  return Suite(tuple(SuiteTask(s.name, s.task_type, _build(s, data), s.dataset, s.resolution,
                               s.split) for s in suite_specs(seed, quick)), seed, quick)
