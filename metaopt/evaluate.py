"""Loss curves over held-out problems -> ``summary.json`` and plots.

The results schema is described in docs/design.md (results files).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import re
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from metaopt.checkpoint import atomic_write_bytes


def summarize_curves(curves: Any, hyperparameters: Mapping[str, Any]) -> dict:
  """Mean and standard error of the mean of loss curves, per step.

  Args:
    curves: array (num_problems, steps + 1) of losses (step 0 = initial loss).
    hyperparameters: recorded as is (e.g. ``{"learning_rate": 0.01}``).

  Returns:
    The per-optimizer entry of the summary schema.
  """
  curves = np.asarray(curves, np.float64)
  n = curves.shape[0]
  mean = curves.mean(axis=0)
  sem = curves.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
  # 7 significant digits: the curves are f32 runs; more digits only grow summary.json.
  clean = lambda xs: [float(f"{x:.7g}") if np.isfinite(x) else None for x in xs]
  return {
      "hyperparameters": dict(hyperparameters),
      "loss_mean": clean(mean),
      "loss_sem": clean(sem),
      "final_loss_mean": clean(mean[-1:])[0],
      "final_loss_sem": clean(sem[-1:])[0],
      "final_losses": clean(curves[:, -1]),
  }


def late_rise(curve: Any, step: int, window: int = 10) -> tuple[float, float, int]:
  """How high a loss curve climbs after ``step``, smoothed over ``window`` steps.

  With the moving average :math:`a_t = \\tfrac1w \\sum_{s=t-w+1}^{t} f_s`, returns
  :math:`(a_{step}, \\max_{t > step} a_t, \\arg\\max_{t > step} a_t)`: a rule has no late
  divergence when the second value is not above the first. The average keeps a
  one-step minibatch bump from counting as a rise (``window=1``: the raw curve).

  Args:
    curve: mean loss per step, index = optimizee step (step 0 = initial loss).
    step: the reference step, e.g. the training horizon (needs ``window - 1 <= step < len - 1``).
    window: moving-average length in steps.

  Example:
    >>> late_rise([3.0, 2.0, 1.0, 1.5, 0.5], step=2, window=1)
    (1.0, 1.5, 3)
  """
  curve = np.asarray(curve, np.float64)
  if not window - 1 <= step < len(curve) - 1 or window < 1:
    raise ValueError(f"late_rise needs 1 <= window <= step + 1 and step < {len(curve) - 1} "
                     f"(the curve's last step); got step={step}, window={window}")
  avg = np.convolve(curve, np.ones(window) / window, mode="valid")  # avg[i] ends at step i+w-1
  after = avg[step - window + 2:]
  worst = int(np.argmax(after))
  return float(avg[step - window + 1]), float(after[worst]), step + 1 + worst


def git_commit() -> str:
  """``$METAOPT_COMMIT`` when set, else the git commit of the package's checkout, else "unknown".

  ``METAOPT_COMMIT`` names the commit of a copied tree (a remote machine), whose ``.git``
  may be missing or stale.
  """
  if os.environ.get("METAOPT_COMMIT"):
    return os.environ["METAOPT_COMMIT"]
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         timeout=10, cwd=pathlib.Path(__file__).parent)
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def malloc_in_use() -> str:
  """The allocator of this process: a loaded ``tcmalloc`` / ``jemalloc`` / ``mimalloc``, else
  "system".

  XLA:CPU allocates fresh buffers on every call; a caching allocator (e.g.
  ``LD_PRELOAD=libtcmalloc_minimal.so.4``, which the Makefile sets when it is
  installed) avoids re-faulting their pages, so timings record which one ran.
  """
  try:
    maps = pathlib.Path("/proc/self/maps").read_text()
  except OSError:
    return "unknown"
  return next((name for name in ("tcmalloc", "jemalloc", "mimalloc") if name in maps), "system")


def malloc_description() -> str:
  """:func:`malloc_in_use`, with the C library's malloc tunables when the system one runs.

  The Makefile runs experiments and the bench with ``GLIBC_TUNABLES`` that keep malloc's heaps
  and back its memory with transparent huge pages (docs/performance.md); timings say so.

  Example:
    >>> malloc_description()   # e.g. 'system (glibc.malloc.hugetlb=1, THP madvise)'
  """
  name = malloc_in_use()
  tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
              if t.startswith("glibc.malloc.")]
  if name != "system" or not tunables:
    return name
  try:
    thp = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    thp = re.search(r"\[(\w+)\]", thp).group(1)
  except (OSError, AttributeError):
    thp = "unknown"
  return f"system ({', '.join(tunables)}; THP {thp})"


def make_summary(experiment: str, variants: Mapping[str, dict], meta_train_seconds: float,
                 eval_seconds: float, **extra: Any) -> dict:
  """Assemble the summary dict shared by all experiments (docs/design.md, results files)."""
  return {
      "experiment": experiment,
      "commit": git_commit(),
      "device": jax.devices()[0].platform,
      "device_kind": jax.devices()[0].device_kind,
      "jax_version": jax.__version__,
      "python": platform.python_version(),
      "malloc": malloc_description(),
      "meta_train_seconds": float(meta_train_seconds),
      "eval_seconds": float(eval_seconds),
      **extra,
      "variants": dict(variants),
  }


_NUMBER = r"(?:-?[0-9][0-9.eE+-]*|null)"
_NUMBER_LIST = re.compile(rf"\[\s*{_NUMBER}(?:\s*,\s*{_NUMBER})*\s*\]")


def write_summary(path: str | os.PathLike, summary: dict) -> None:
  """Write ``summary`` as indented JSON, atomically; each list of numbers (a loss curve,
  per-run losses) on one line."""
  text = _NUMBER_LIST.sub(lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "),
                          json.dumps(summary, indent=1))
  atomic_write_bytes(path, (text + "\n").encode())


def format_table(summary: dict) -> str:
  """A plain-text table: final mean loss +- sem per optimizer and variant, best first."""
  lines = []
  for variant, v in summary["variants"].items():
    lines.append(f"[{variant}] loss at step {v['steps']} "
                 f"over {v['num_test_problems']} test problems")
    rows = sorted(v["optimizers"].items(),
                  key=lambda kv: np.inf if kv[1]["final_loss_mean"] is None
                  else kv[1]["final_loss_mean"])
    for name, o in rows:
      hp = ", ".join(f"{k}={val:.3g}" for k, val in o["hyperparameters"].items()
                     if isinstance(val, (int, float)))
      mean, sem = o["final_loss_mean"], o["final_loss_sem"]
      value = "diverged" if mean is None else f"{mean:.4g} +- {sem:.2g}"
      lines.append(f"  {name:<12} {value:<22} {hp}")
  return "\n".join(lines)


def plot_curves(summary: dict, path: str | os.PathLike,
                title: Callable[[str], str] = lambda variant: variant, main: str = "lstm") -> None:
  """Loss vs step on a log axis, one line per optimizer, one panel per variant.

  ``main`` (the experiment's own learned rule) is drawn bold black, other
  learned rules (names starting with ``lstm``) dashed.
  """
  try:
    import matplotlib
  except ImportError as e:
    raise ImportError("plot_curves needs matplotlib: pip install 'metaopt[experiments]'") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  variants = summary["variants"]
  fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 4), squeeze=False)
  for ax, (variant, v) in zip(axes[0], variants.items()):
    others = [n for n in v["optimizers"] if n.startswith("lstm") and n != main]
    for name, o in v["optimizers"].items():
      mean = np.array([np.nan if x is None else x for x in o["loss_mean"]])
      sem = np.array([np.nan if x is None else x for x in o["loss_sem"]])
      steps = np.arange(len(mean))
      style = dict(lw=1.4)
      if name == main:
        style = dict(lw=2.2, color="black")
      elif name.startswith("lstm"):  # other learned rules: dark, dashed
        style = dict(lw=1.8, ls="--", color=("0.4", "tab:brown", "0.65")[others.index(name) % 3])
      line, = ax.plot(steps, mean, label=name, **style)
      ax.fill_between(steps, np.maximum(mean - sem, 1e-12), mean + sem, alpha=0.15,
                      color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("optimizee step")
    ax.set_ylabel("loss (mean over test problems)")
    ax.set_title(title(variant))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
