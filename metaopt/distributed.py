"""Meta-training across devices, processes and hosts on JAX's multi-controller runtime.

Every process runs the same program (``meta_train`` unchanged) after
:func:`initialize` (``jax.distributed.initialize``); JAX's runtime, not metaopt,
connects the processes, runs the collectives (gloo on CPU, NCCL on GPU, ICI on
TPU) and watches their heartbeats. What metaopt adds is where arrays live
(:class:`Placement`): one mesh over all processes' devices with one axis,
``"runs"``; the problems of a meta-step (and of validation) are split along it,
phi and the meta-optimizer state are replicated.

Each process draws only its share of the problems, and the global batch is the
one a single process draws: the trainer calls the estimator's ``start_runs(phi,
family, key)`` (same key on every process) under ``jax.jit`` with the runs'
leading axis split over the mesh as ``out_shardings``. XLA's partitioner then
computes each device's slice of the runs, and JAX's PRNG is partitionable
(``jax_threefry_partitionable``, the default), so every slice holds exactly the
bits one process would draw. This is a property of the trainer, not of an
estimator: any estimator whose runs carry the run axis first (``TruncatedBackprop``,
``PES``) and that draws them with ``jax.random`` from its key shards the same way.

Example:
  >>> import metaopt.distributed
  >>> metaopt.distributed.initialize()   # SLURM, Open MPI, TPU pods: finds its peers
  >>> result = metaopt.meta_train(family, config, cfg, checkpoint_dir="ckpt")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# The mesh axis the runs (problems) of a meta-step are split along.
AXIS = "runs"
# What metaopt.launch passes to each process it starts (read by initialize()).
ENV_COORDINATOR = "METAOPT_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "METAOPT_NUM_PROCESSES"
ENV_PROCESS_ID = "METAOPT_PROCESS_ID"
ENV_HEARTBEAT = "METAOPT_HEARTBEAT_TIMEOUT"
# Seconds without a heartbeat before JAX's coordination service declares a process dead.
DEFAULT_HEARTBEAT_TIMEOUT = 30


class PeerFailure(RuntimeError):
  """A computation spanning several processes failed: most often another process died."""


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_seconds: int | None = None,
               **kwargs: Any) -> None:
  """``jax.distributed.initialize``, with metaopt's launcher settings and CPU collectives.

  Arguments left None come from ``METAOPT_COORDINATOR_ADDRESS``, ``METAOPT_NUM_PROCESSES``
  and ``METAOPT_PROCESS_ID`` (set by ``python -m metaopt.launch``); when those are unset
  too, JAX finds them itself on SLURM, Open MPI and TPU pod slices. On CPU the
  processes' collectives use gloo. Call it before any other JAX call.

  Args:
    coordinator_address: ``host:port`` of process 0's coordination service.
    num_processes: how many processes take part.
    process_id: this process's index, 0 .. ``num_processes - 1``.
    heartbeat_timeout_seconds: after this long without a heartbeat a process is dead and
      the others stop with an error (default ``METAOPT_HEARTBEAT_TIMEOUT``, else 30).
    **kwargs: passed to ``jax.distributed.initialize`` (e.g. ``local_device_ids``).

  Example:
    >>> initialize("10.0.0.1:8476", num_processes=4, process_id=int(os.environ["RANK"]))
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get(ENV_COORDINATOR)
  if num_processes is None and env.get(ENV_NUM_PROCESSES):
    num_processes = int(env[ENV_NUM_PROCESSES])
  if process_id is None and env.get(ENV_PROCESS_ID):
    process_id = int(env[ENV_PROCESS_ID])
  if heartbeat_timeout_seconds is None:
    heartbeat_timeout_seconds = int(env.get(ENV_HEARTBEAT, DEFAULT_HEARTBEAT_TIMEOUT))
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds, **kwargs)


def is_main_process() -> bool:
  """Whether this is process 0 (the one that logs, shows progress and writes results)."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def to_host(x: jax.Array) -> np.ndarray:
  """The global value of ``x`` as numpy on every process (gathered when split over processes)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def local_copy(tree: Any) -> Any:
  """``tree`` with replicated global arrays as arrays on this process's first device.

  A process can then use them alone (save, evaluate, print) without the others.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and x.is_fully_replicated:
      return x.addressable_data(0)
    return x
  return jax.tree.map(one, tree)


@contextlib.contextmanager
def failures_named(what: str) -> Iterator[None]:
  """Re-raise a runtime error of a multi-process computation as :class:`PeerFailure`.

  One process alone cannot tell a dead peer from another failure of a collective;
  the message says what to do in either case.
  """
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    raise PeerFailure(
        f"{what} failed on process {jax.process_index()} of {jax.process_count()}: another "
        f"process most likely died or lost its connection ({str(e).splitlines()[0][:300]}). "
        "Restart all processes with resume=True (RESUME=1) to continue from the last "
        "checkpoint.") from e


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class Placement:
  """Where meta-training's arrays live: runs split over a mesh of all devices, the rest replicated.

  With one device nothing is placed (arrays stay where JAX puts them). With several
  devices of one process, runs whose count does not divide the device count stay on
  one device; across processes they are replicated (every process computes all of
  them: correct, not faster).

  Args:
    devices: the mesh's devices (default ``jax.devices()``: every process's).
    split_draws: whether :meth:`split_outputs` has each device compute its own slice
      (default: only across processes; within one process the outputs are computed
      whole, then split, as before there were processes).

  Example:
    >>> placement = Placement()
    >>> start_runs = placement.split_outputs(estimator.start_runs)
    >>> state = placement.place(state)
  """

  def __init__(self, devices=None, split_draws: bool | None = None):
    devices = jax.devices() if devices is None else list(devices)
    self.num_devices = len(devices)
    self.multi_process = len({d.process_index for d in devices}) > 1
    self.mesh = Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None
    self.split_draws = self.multi_process if split_draws is None else split_draws
    self._split = {}   # (fn, output structure) -> jitted fn with split outputs

  def splits(self, x: Any) -> bool:
    """Whether an array's leading axis is split over the mesh (it divides the device count)."""
    return (self.mesh is not None and len(np.shape(x)) >= 1
            and np.shape(x)[0] % self.num_devices == 0)

  def sharding(self, x: Any, split: bool = True) -> NamedSharding:
    """``x``'s sharding: its leading axis split when ``split`` and it divides, else replicated."""
    return NamedSharding(self.mesh, PartitionSpec(AXIS) if split and self.splits(x)
                         else PartitionSpec())

  def put(self, tree: Any, split: bool = False) -> Any:
    """``tree``'s arrays on the mesh (leading axes split when ``split``), values unchanged.

    Across processes every process must call it with the same values (e.g. drawn from the
    same key): each takes its own devices' slices.
    """
    if self.mesh is None:
      return tree

    def one(x):
      s = self.sharding(x, split)
      if isinstance(x, jax.Array) and (not self.multi_process or not x.is_fully_addressable):
        return jax.device_put(x, s)
      if _is_key(x):
        return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, s, lambda index: np.asarray(host[index]))
    return jax.tree.map(one, tree)

  def split(self, tree: Any) -> Any:
    """``tree`` (runs or problems: leading axis first) split over the mesh.

    Within one process a tree whose leading axes do not all divide the device count is
    returned as it is; across processes such leaves are replicated.
    """
    if self.mesh is None or (not self.multi_process
                             and not all(self.splits(x) for x in jax.tree.leaves(tree))):
      return tree
    return self.put(tree, split=True)

  def place(self, state: Any) -> Any:
    """A train state's runs split over the mesh, the rest replicated (see the class)."""
    runs = self.split(state.runs)
    if self.mesh is None or (runs is state.runs and not self.multi_process):
      return state
    return self.put(state._replace(runs=None))._replace(runs=runs)

  def split_outputs(self, fn: Callable) -> Callable:
    """``jax.jit(fn)`` whose outputs' leading axes are split over the mesh.

    Across processes each device computes only its slice of the outputs (XLA's
    partitioner propagates the output sharding back to the draws), with the values
    of the unsplit ``jax.jit(fn)``. Within one process the outputs are computed, then
    placed as :meth:`place` places runs (left alone unless they all divide), unless
    ``split_draws``.
    """
    if self.mesh is None or not self.split_draws:
      jitted = jax.jit(fn)

      return lambda *args: self.split(jitted(*args))
    def call(*args):
      leaves, treedef = jax.tree.flatten(jax.eval_shape(fn, *args))
      key = (fn, treedef, tuple((x.shape, x.dtype) for x in leaves))
      if key not in self._split:  # one compilation per function and output shapes
        out = treedef.unflatten([self.sharding(x) for x in leaves])
        self._split[key] = jax.jit(fn, out_shardings=out)
      return self._split[key](*args)
    return call
