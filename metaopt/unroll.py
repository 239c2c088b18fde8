"""One unroll for every optimizer: a jitted ``lax.scan`` of optimizee steps.

Every run of any optax transform (learned or hand-designed) on any problem
family goes through :func:`unroll`; evaluation vmaps it over problems and
meta-training differentiates it with respect to the learned rule's phi.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.problems.base import ProblemFamily, Task


class UnrollState(NamedTuple):
  """What carries over from one optimizee step (or truncation) to the next.

  Attributes:
    params: the optimizee parameters theta_t.
    model_state: non-optimized model state (e.g. batch-norm statistics), or ().
    opt_state: the optimizer's state (the LSTM state for the learned rule).
    key: the run's PRNG key; step t's minibatch key is ``fold_in(key, t)``.
    step: the number of optimizee steps taken so far (int32 scalar).
  """

  params: Any
  model_state: Any
  opt_state: Any
  key: jax.Array
  step: jax.Array


# (gradients, params, optimizer state) at a step -> a value recorded by the unroll.
Probe = Callable[[Any, Any, Any], Any]


def init_unroll(optimizer: optax.GradientTransformation, family: ProblemFamily,
                task: Task, key: jax.Array) -> UnrollState:
  """Start a run: theta_0 from the family, a fresh optimizer state, step 0.

  Args:
    optimizer: any optax transform.
    family: the problem family.
    task: one problem sampled from ``family``.
    key: typed PRNG key for theta_0 and the run's minibatches.

  Returns:
    The initial :class:`UnrollState`.
  """
  k_init, k_run = jax.random.split(key)
  params, model_state = family.init(task, k_init)
  return UnrollState(params, model_state, optimizer.init(params), k_run,
                     jnp.zeros((), jnp.int32))


def unroll(optimizer: optax.GradientTransformation, family: ProblemFamily, task: Task,
           state: UnrollState, num_steps: int, second_order: bool = False,
           remat: bool = False, probe: Probe | None = None
           ) -> tuple[UnrollState, jax.Array] | tuple[UnrollState, jax.Array, Any]:
  """Run ``num_steps`` optimizer steps with ``lax.scan``; return the state and the losses.

  At step t: ``(f_t, grad_t) = value_and_grad(f)(theta_t)`` on the minibatch of
  key ``fold_in(state.key, t)``; the optimizer sees ``stop_gradient(grad_t)``
  (the paper's first-order meta-gradient; ``second_order=True`` keeps the
  Hessian path); ``theta_{t+1} = theta_t + update_t``.

  Args:
    optimizer: any optax transform (its update gets ``params`` too).
    family: the problem family.
    task: the problem.
    state: where to start (from :func:`init_unroll` or a previous unroll).
    num_steps: number of optimizee steps (static).
    second_order: let meta-gradients flow through the optimizee's gradients.
    remat: rematerialize in two levels (``jax.checkpoint`` of chunks of about
      sqrt(num_steps) steps, recomputed one at a time in the backward pass),
      trading one extra forward pass for memory that grows sublinearly.
    probe: ``probe(grads, params, opt_state) -> pytree`` evaluated at every step before
      the update (e.g. the distance between a rule's and a teacher's updates, see
      :mod:`metaopt.objectives`); its values are stacked over steps and returned.

  Returns:
    ``(new_state, losses)`` with ``losses[i] = f(theta_{t0+i})`` for
    ``i = 0..num_steps`` (``num_steps + 1`` values; the last one is evaluated on
    the minibatch the next unroll's first step uses, so truncations chain exactly);
    with a ``probe``, ``(new_state, losses, probed)``.

  Example:
    >>> fam = metaopt.problems.QuadraticFamily()
    >>> task = fam.sample_task(jax.random.key(0))
    >>> opt = optax.adam(0.1)
    >>> state = init_unroll(opt, fam, task, jax.random.key(1))
    >>> state, losses = jax.jit(unroll, static_argnums=(0, 4))(opt, fam, task, state, 20)
  """
  loss_and_grad = jax.value_and_grad(family.loss, has_aux=True)

  def step(carry: UnrollState, _):
    key = jax.random.fold_in(carry.key, carry.step)
    (loss, model_state), grads = loss_and_grad(carry.params, carry.model_state, task, key)
    if not second_order:
      grads = jax.lax.stop_gradient(grads)
      # d loss / d params is grads: reuse it in the meta-backward pass instead of
      # differentiating the optimizee's forward pass a second time.
      loss = value_with_gradient(carry.params, jax.lax.stop_gradient(loss), grads)
    probed = () if probe is None else probe(grads, carry.params, carry.opt_state)
    updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
    params = optax.apply_updates(carry.params, updates)
    new = UnrollState(params, model_state, opt_state, carry.key, carry.step + 1)
    return new, (loss, probed)

  if remat:
    # Two-level rematerialization: the backward pass keeps only the carry at chunk
    # boundaries and recomputes one chunk at a time, so memory grows ~ sqrt(num_steps).
    chunk = remat_chunk_size(num_steps)
    chunk_body = jax.checkpoint(lambda carry, _: jax.lax.scan(step, carry, length=chunk))
    state, outs = jax.lax.scan(chunk_body, state, length=num_steps // chunk)
    outs = jax.tree.map(lambda x: x.reshape((num_steps,) + x.shape[2:]), outs)
  else:
    state, outs = jax.lax.scan(step, state, length=num_steps)
  losses, probed = outs
  final_loss, _ = family.loss(state.params, state.model_state, task,
                              jax.random.fold_in(state.key, state.step))
  losses = jnp.concatenate([losses, final_loss[None]])
  return (state, losses) if probe is None else (state, losses, probed)


@jax.custom_vjp
def value_with_gradient(params: Any, value: jax.Array, grads: Any) -> jax.Array:
  """``value`` (= f(params)) whose derivative with respect to ``params`` is ``grads``.

  The first-order unroll already has ``grads = grad f(params)``; routing f's
  value through this function makes the meta-backward pass use them (a scaled
  copy) instead of storing f's activations and backpropagating through f again
  (one model backward pass per step instead of two). ``value`` and
  ``grads`` themselves get no cotangent (they are stop-gradient'ed by the caller).
  """
  del params, grads
  return value


def _value_with_gradient_fwd(params, value, grads):
  del params
  return value, grads


def _value_with_gradient_bwd(grads, cotangent):
  params_ct = jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grads)
  return params_ct, jnp.zeros_like(cotangent), jax.tree.map(jnp.zeros_like, grads)


value_with_gradient.defvjp(_value_with_gradient_fwd, _value_with_gradient_bwd)


def remat_chunk_size(num_steps: int) -> int:
  """The divisor of ``num_steps`` closest to its square root (chunk length for ``remat``)."""
  divisors = [d for d in range(1, num_steps + 1) if num_steps % d == 0]
  return min(divisors, key=lambda d: abs(d - num_steps ** 0.5))


def loss_curves(optimizer: optax.GradientTransformation, family: ProblemFamily,
                tasks: Task, keys: jax.Array, num_steps: int) -> tuple[jax.Array, Any]:
  """Loss curves of ``optimizer`` on a batch of problems (:func:`unroll` over runs).

  Not jitted itself, so it can be vmapped over optimizer hyper-parameters; use
  :func:`jitted_loss_curves` for a single optimizer. The runs are mapped the way
  the family's ``run_mode`` says (:func:`map_runs`).

  Args:
    optimizer: any optax transform.
    family: the problem family.
    tasks: a batch of tasks (leading axis n).
    keys: n typed PRNG keys, one per run (theta_0 and minibatches).
    num_steps: horizon T.

  Returns:
    ``(curves, final)``: curves of shape (n, T + 1), the loss at steps 0..T of
    every run, and ``final = (params, model_state)`` of the n runs after step T
    (the model state holds e.g. batch-norm statistics; ``()`` for most families).
  """
  def one_run(task, key):
    state = init_unroll(optimizer, family, task, key)
    state, losses = unroll(optimizer, family, task, state, num_steps)
    return losses, (state.params, state.model_state)
  return map_runs(one_run, tasks, keys, mode=run_mode(family))


RUN_MODES = ("vmap", "map", "sequential")


def run_mode(family: ProblemFamily) -> str:
  """The family's declared ``run_mode``; a clear error when it declares none."""
  mode = getattr(family, "run_mode", None)
  if mode not in RUN_MODES:
    raise TypeError(f"{type(family).__name__} must declare run_mode, one of {RUN_MODES} (e.g. "
                    "run_mode: str = struct.field(pytree_node=False, default='vmap')), got "
                    f"{mode!r}")
  return mode


def map_runs(fn: Callable, *args: Any, mode: str = "vmap") -> Any:
  """``fn`` over the leading (run) axis of ``args``, the way ``mode`` says.

  ``"vmap"`` batches the runs (what fills an accelerator); ``"map"`` runs them one
  after another in a ``lax.map`` loop (for ops that are slow when batched, e.g. a
  convolution kernel per run becomes a grouped convolution); ``"sequential"`` writes
  each run out in turn in the program (a few large runs on a CPU, where one run
  already fills the cores; compile time grows with the number of runs). A single
  run is never batched: ``fn`` runs on it directly and its outputs get the leading
  axis back. Every mode gives the same numbers.

  Example:
    >>> losses = map_runs(lambda task, key: run(task, key), tasks, keys, mode="map")
  """
  if mode not in RUN_MODES:
    raise ValueError(f"map_runs: mode must be one of {RUN_MODES}, got {mode!r}")
  num_runs = jax.tree.leaves(args)[0].shape[0]
  run = lambda i: fn(*jax.tree.map(lambda a: a[i], args))
  if num_runs == 1:
    return jax.tree.map(lambda a: a[None], run(0))
  if mode == "map":
    return jax.lax.map(lambda a: fn(*a), args)
  if mode == "sequential":
    return jax.tree.map(lambda *outs: jnp.stack(outs), *[run(i) for i in range(num_runs)])
  return jax.vmap(fn)(*args)


@functools.partial(jax.jit, static_argnames=("make_optimizer", "num_steps"))
def jitted_loss_curves(make_optimizer: Callable[..., optax.GradientTransformation],
                       family: ProblemFamily, tasks: Task, keys: jax.Array,
                       num_steps: int, opt_args: tuple = ()) -> tuple[jax.Array, Any]:
  """:func:`loss_curves` of ``make_optimizer(*opt_args)`` in one jitted call.

  ``opt_args`` are traced (e.g. a learning rate or the learned rule's phi), so
  new values reuse the compiled function; ``make_optimizer`` is static (pass
  the same callable object to hit the cache).

  Example:
    >>> curves, (params, state) = jitted_loss_curves(optax.adam, fam, tasks, keys, 100, (0.1,))
  """
  return loss_curves(make_optimizer(*opt_args), family, tasks, keys, num_steps)


def sample_tasks(family: ProblemFamily, key: jax.Array, num: int) -> tuple[Task, jax.Array]:
  """``num`` problems and ``num`` run keys from one key (for validation / test sets).

  Returns:
    ``(tasks, run_keys)``, each with leading axis ``num``.
  """
  k_tasks, k_runs = jax.random.split(key)
  tasks = jax.vmap(family.sample_task)(jax.random.split(k_tasks, num))
  return tasks, jax.random.split(k_runs, num)
