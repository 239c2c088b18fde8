"""The task suite's instances: task types, data sets and sizes drawn from a seed, and the split.

See :mod:`metaopt.problems.suite` for the suite itself; this module is pure Python
(no data, no JAX), so the instances and their split can be listed and checked cheaply.
"""

from __future__ import annotations

import dataclasses

import numpy as np

META_TRAIN, HELD_OUT_TYPE, HELD_OUT_DATA = "meta_train", "held_out_type", "held_out_data"
SPLITS = (META_TRAIN, HELD_OUT_TYPE, HELD_OUT_DATA)
TRAIN_TYPES = ("mlp", "logistic", "rosenbrock", "charlm")
HELD_OUT_TYPES = ("autoencoder", "conv", "quadratic")
HELD_OUT_DATASETS = ("fashion_mnist",)
ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
PARAM_BUDGET = 20_000
"""Sizes are shrunk towards their minimum until a net has at most this many parameters
(a full-resolution CIFAR-10 MLP's minimum, 3072 x 8, is above it)."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One instance of the suite before its data is loaded: type, data, sizes (``options``)."""

  name: str
  task_type: str
  dataset: str | None
  resolution: int | None      # 8: downsampled to 8x8; None: the original images
  options: dict

  @property
  def split(self) -> str:
    """``held_out_type``, ``held_out_data`` or ``meta_train``."""
    if self.task_type in HELD_OUT_TYPES:
      return HELD_OUT_TYPE
    return HELD_OUT_DATA if self.dataset in HELD_OUT_DATASETS else META_TRAIN


def _log_int(rng, lo, hi) -> int:
  return int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def _image_shape(dataset: str, resolution: int | None) -> tuple[int, int]:
  side = resolution or (32 if dataset == "cifar10" else 28)
  return side, 3 if dataset == "cifar10" else 1


def _dense_params(sizes) -> int:
  return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def _shrink(widths, lo, count):
  widths = tuple(widths)
  while count(widths) > PARAM_BUDGET and max(widths) > lo:
    widths = tuple(max(lo, w * 3 // 4) for w in widths)
  return widths


def suite_specs(seed: int = 0, quick: bool = False) -> tuple[TaskSpec, ...]:
  """The suite's instances (types, data, sizes), drawn deterministically from ``seed``.

  ``quick``: one or two tiny instances per type on 8x8 images (for tests).
  """
  rng = np.random.default_rng(seed)
  specs = []

  def add(task_type, dataset=None, resolution=None, **options):
    where = f"{dataset}{f'@{resolution}' if resolution else ''}/" if dataset else ""
    name = f"{task_type}/{where}{sum(s.task_type == task_type for s in specs)}"
    specs.append(TaskSpec(name, task_type, dataset, resolution, options))

  images = ([("mnist", 8), ("fashion_mnist", 8)] if quick else
            [(d, r) for d in ("mnist", "cifar10", "fashion_mnist") for r in (8, None)])
  for d, r in images:
    side, ch = _image_shape(d, r)
    depth = 1 if quick else int(rng.integers(1, 4))
    widths = _shrink([_log_int(rng, 8, 16 if quick else 128) for _ in range(depth)], 8,
                     lambda w: _dense_params((side * side * ch,) + w + (10,)))
    add("mlp", d, r, hidden_sizes=widths, activation=_pick(rng, ACTIVATIONS),
        batch_size=32 if quick else _pick(rng, (32, 64, 128)))
  for d, r in [("mnist", 8)] if quick else [("mnist", 8), ("mnist", None), ("cifar10", 8),
                                            ("fashion_mnist", 8)]:
    add("logistic", d, r, batch_size=32 if quick else _pick(rng, (32, 64, 128)),
        l2=_pick(rng, (0.0, 1e-3)))
  for _ in range(1 if quick else 3):
    add("rosenbrock", dim=int(rng.integers(2, 6 if quick else 21)))
  for _ in range(1 if quick else 2):
    hidden = _log_int(rng, 8, 16) if quick else _log_int(rng, 16, 48)
    add("charlm", embed_size=8 if quick else _pick(rng, (8, 16)), hidden_size=hidden,
        seq_len=8 if quick else _pick(rng, (16, 32)), batch_size=8 if quick else 32,
        max_bytes=100_000 if quick else 1 << 20)
  for d, r in [("mnist", 8)] if quick else [("mnist", 8), ("cifar10", 8), ("fashion_mnist", 8),
                                            ("mnist", None)]:
    side, ch = _image_shape(d, r)
    code = _log_int(rng, 4, 8 if quick or r is None else 16)
    depth = 1 if quick or r is None else int(rng.integers(1, 3))
    widths = (_log_int(rng, 2 * code, 64), code) if depth == 2 else (code,)
    widths = _shrink(widths, 4, lambda w: 2 * _dense_params((side * side * ch,) + w))
    add("autoencoder", d, r, hidden_sizes=widths, activation=_pick(rng, ACTIVATIONS),
        batch_size=32 if quick else _pick(rng, (32, 64, 128)))
  convs = ([("mnist", 8, True), ("mnist", 8, False)] if quick else
           [("cifar10", None, True), ("cifar10", 8, False), ("mnist", None, False),
            ("fashion_mnist", 8, True)])
  for d, r, bn in convs:
    side, ch = _image_shape(d, r)
    blocks = {8: int(rng.integers(1, 3)), 28: 2, 32: 3}[side]
    k = 3 if quick else _pick(rng, (3, 5))
    sizes = tuple(_log_int(rng, 4, 6 if quick else 16) for _ in range(blocks))
    sizes += (8 if quick else _log_int(rng, 16, 32),)    # the fully connected layer

    def count(s, blocks=blocks, side=side, ch=ch, k=k):
      chans = (ch,) + s[:-1]
      conv = sum(k * k * a * b + 3 * b for a, b in zip(chans[:-1], chans[1:]))
      flat = (side // 2 ** blocks) ** 2 * s[-2]
      return conv + flat * s[-1] + 2 * s[-1] + s[-1] * 10 + 10

    sizes = _shrink(sizes, 4, count)
    add("conv", d, r, channels=sizes[:-1], fc_size=sizes[-1], kernel_size=k, batch_norm=bn,
        batch_size=32 if quick else _pick(rng, (32, 64)))
  for _ in range(1 if quick else 3):
    add("quadratic", dim=int(rng.integers(3, 9)) if quick else _log_int(rng, 5, 50),
        condition_number=float(10 ** rng.uniform(0, 2 if quick else 4)),
        distance=float(10 ** rng.uniform(-1, 1)))
  return tuple(specs)
