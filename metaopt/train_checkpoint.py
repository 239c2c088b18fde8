"""Whole-training-state checkpoints (meta-training resume) on orbax-checkpoint.

Each checkpoint is an orbax step folder ``<directory>/step_<step>`` with two
items: ``state``, the tree's arrays (typed PRNG keys as their key data), and
``meta``, JSON with the run's identity, the caller's info and a SHA-256 of every
array. Saves are synchronous and atomic (orbax writes a temporary folder and
renames it). Restoring checks the identity first, then the arrays' shapes and
dtypes, then every digest, and falls back to the previous checkpoint when the
newest is damaged.

Under ``jax.distributed`` every process calls :meth:`TrainCheckpointer.save` and
:meth:`TrainCheckpointer.restore` together (on a file system they share): orbax
writes each process's shards of the arrays, process 0 the JSON and the folder
moves, and the digests are of each array's global value (gathered from the
processes), so a checkpoint restores on any number of processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from metaopt.checkpoint_io import (
  _brief,
  _differences,
  _digest,
  _drop_orphans,
  _is_key,
  _json_digest,
  _plain,
  _restore_like,
  _sync,
)
from metaopt.distributed import is_main_process, to_host

FORMAT = "metaopt.train_state/2"
_ABSENT = "(absent)"


class CheckpointError(ValueError):
  """No checkpoint can be read, or one was made for another configuration."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files are damaged (names the path)."""


class TrainCheckpointer:
  """Keeps the ``keep`` newest whole-training-state checkpoints of one run in ``directory``.

  Args:
    directory: the run's checkpoint folder (created on the first save).
    identity: nested JSON-able dict of the settings a resumed run must share with
      its checkpoint (e.g. the rule's and meta-training's configuration).
    keep: how many of the newest checkpoints to keep (at least 1).

  Example:
    >>> ckpt = TrainCheckpointer("ckpt", {"rule": {"hidden_sizes": [20, 20]}})
    >>> ckpt.save(100, {"phi": phi, "key": jax.random.key(0)}, {"step": 100})
    >>> tree, info = ckpt.restore({"phi": phi, "key": jax.random.key(0)})
  """

  def __init__(self, directory: str | os.PathLike, identity: dict, keep: int = 2):
    if keep < 1:
      raise ValueError(f"TrainCheckpointer: keep must be at least 1, got {keep}")
    self.directory = pathlib.Path(directory).absolute()
    self.identity = _plain(identity)  # tuples -> lists, as stored
    self.keep = keep

  @contextlib.contextmanager
  def _manager(self):
    """An orbax manager of ``directory``, with orbax's absl logging below ERROR silenced."""
    logger, options = logging.getLogger("absl"), ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, enable_async_checkpointing=False, create=True,
        step_prefix="step", step_format_fixed_length=9)
    level = logger.level
    logger.setLevel(logging.ERROR)
    manager = None
    try:
      manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"),
                                      options=options)
      yield manager
    finally:
      if manager is not None:
        manager.close()
      logger.setLevel(level)

  def path(self, step: int) -> pathlib.Path:
    """The folder of the checkpoint of meta-step ``step``."""
    return self.directory / f"step_{step:09d}"

  def steps(self) -> list[int]:
    """Steps of the existing checkpoints, newest first."""
    if not self.directory.is_dir():
      return []
    with self._manager() as manager:
      return sorted(manager.all_steps(), reverse=True)

  def save(self, step: int, tree: Any, info: dict) -> pathlib.Path:
    """Save ``tree`` and ``info`` as the checkpoint of ``step``; keep the ``keep`` newest.

    Synchronous and atomic: when this returns the checkpoint is complete on disk,
    and a process killed during the save leaves the previous checkpoints intact.
    Checkpoints of ``step`` or later steps (left by a run this one resumed before)
    are replaced.

    Args:
      step: the meta-step; names the checkpoint.
      tree: pytree of jax or numpy arrays (typed PRNG keys and None leaves allowed).
      info: JSON-able dict returned by :meth:`restore` (loop counters, histories).

    Returns:
      The checkpoint's folder.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays, leaves = {}, []
    for i, (key_path, leaf) in enumerate(flat):
      data = jax.random.key_data(leaf) if _is_key(leaf) else leaf
      host = to_host(data)  # the global value, gathered when split over processes
      arrays[f"{i:06d}"] = data if isinstance(data, jax.Array) else host
      leaves.append({"path": jax.tree_util.keystr(key_path), "shape": list(host.shape),
                     "dtype": host.dtype.name, "key": str(jax.random.key_impl(leaf))
                     if _is_key(leaf) else None, "sha256": _digest(host)})
    body = {"format": FORMAT, "step": int(step), "identity": self.identity,
            "info": _plain(info), "leaves": leaves}
    items = {"meta": ocp.args.JsonSave({"body": body, "sha256": _json_digest(body)})}
    if arrays:
      items["state"] = ocp.args.StandardSave(arrays)
    if is_main_process():
      for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):  # left by a killed save
        shutil.rmtree(tmp, ignore_errors=True)
    _sync("save")
    with self._manager() as manager:
      for old in manager.all_steps():
        if old >= step:  # a later timeline this (resumed) run replaces
          manager.delete(old)
      if not manager.save(step, args=ocp.args.Composite(**items), force=True):
        raise CheckpointError(f"orbax did not save checkpoint {self.path(step)}")
      manager.wait_until_finished()
    return self.path(step)

  def restore(self, template: Any) -> tuple[Any, dict]:
    """The newest good checkpoint, in ``template``'s structure, and its info.

    A damaged checkpoint (unreadable, truncated or altered files) is reported on
    stderr and the previous one is tried.

    Args:
      template: a tree like the saved one (same structure, shapes, dtypes, typed
        keys); restored arrays take its leaves' shardings.

    Returns:
      ``(tree, info)``.

    Raises:
      CheckpointError: no checkpoint, none readable, or the newest readable one was
        made for another configuration (every differing identity field is named)
        or holds arrays that do not fit ``template``.
    """
    tried = []
    for step in self.steps():
      try:
        return self._restore_step(step, template)
      except CorruptCheckpointError as e:
        tried.append(f"{self.path(step)}: {e}")
        if is_main_process():
          print(f"warning: checkpoint {self.path(step)} is damaged ({e}); trying the previous "
                "one", file=sys.stderr)
    raise CheckpointError(f"no readable checkpoint in {self.directory} " + (
        "(tried " + "; ".join(tried) + ")" if tried else "(there is none)"))

  def _restore_step(self, step: int, template: Any) -> tuple[Any, dict]:
    path = self.path(step)
    with self._manager() as manager:
      try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        body, ok = meta["body"], meta["sha256"] == _json_digest(meta["body"])
      except Exception as e:  # orbax and tensorstore raise many types on bad files
        raise CorruptCheckpointError(f"its meta item is unreadable: {_brief(e)}") from e
      if not ok:
        raise CorruptCheckpointError("its meta item fails its checksum")
      if body.get("format") != FORMAT:
        raise CorruptCheckpointError(f"its format is {body.get('format')!r}, not {FORMAT!r}")
      diff = _differences(body["identity"], self.identity)
      if diff:
        raise CheckpointError(f"checkpoint {path} was made for another configuration: "
                              + "; ".join(diff))
      flat, treedef = jax.tree_util.tree_flatten_with_path(template)
      stored = body["leaves"]
      if len(stored) != len(flat):
        raise CheckpointError(f"checkpoint {path} holds {len(stored)} arrays, this run's state "
                              f"has {len(flat)}")
      abstract = {}
      for i, ((key_path, leaf), want) in enumerate(zip(flat, stored)):
        like = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        shape = np.shape(like)
        dtype = np.dtype(like.dtype) if hasattr(like, "dtype") else np.asarray(like).dtype
        if (list(shape), dtype.name, _is_key(leaf)) != (want["shape"], want["dtype"],
                                                          want["key"] is not None):
          raise CheckpointError(
              f"checkpoint {path}: {want['path']} is {want['dtype']}{want['shape']}"
              f"{' key data' if want['key'] else ''}, this run's "
              f"{jax.tree_util.keystr(key_path)} is {dtype.name}{list(shape)}"
              f"{' key data' if _is_key(leaf) else ''}")
        abstract[f"{i:06d}"] = (jax.ShapeDtypeStruct(shape, dtype, sharding=like.sharding)
                                if isinstance(like, jax.Array) else np.empty(shape, dtype))
      error = None
      try:
        arrays = {}
        if abstract:
          arrays = manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract))).state
        values = [arrays[k] for k in abstract]
      except Exception as e:  # any read failure means damaged files
        error = _brief(e)
    if error is not None:  # out of the except block: the error's frames can be collected
      _drop_orphans()
      raise CorruptCheckpointError(f"its arrays are unreadable: {error}")
    for value, want in zip(values, stored):
      if _digest(to_host(value)) != want["sha256"]:
        raise CorruptCheckpointError(f"array {want['path']} fails its checksum")
    leaves = [_restore_like(leaf, value) for (_, leaf), value in zip(flat, values)]
    return treedef.unflatten(leaves), body["info"]

  def set_aside(self) -> None:
    """Move the existing checkpoints to ``<directory>/replaced/`` (a fresh run replaces them)."""
    old = [self.path(step) for step in self.steps()]
    if not old:
      return
    replaced = self.directory / "replaced"
    if is_main_process():  # across processes: process 0 moves them, the others wait
      replaced.mkdir(parents=True, exist_ok=True)
      for path in old:
        if (replaced / path.name).exists():
          shutil.rmtree(replaced / path.name)
        path.replace(replaced / path.name)
      print(f"moved {len(old)} old checkpoint(s) to {replaced}", file=sys.stderr)
    _sync("set_aside")
