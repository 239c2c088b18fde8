"""Markdown tables of ``summary.json`` files, as pasted into the README.

``python -m experiments.tables results/cifar/summary.json`` prints one table per
variant (optimizers by final loss); ``--by-variant`` prints one row per
optimizer and one column per variant (final loss), marking the best;
``--late-rise 100`` prints, for every variant longer than 100 steps, each
optimizer's moving-average loss at step 100 and the highest it reaches after
(:func:`metaopt.evaluate.late_rise`; ``--window``, default 10 steps).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from metaopt.evaluate import late_rise


def _cell(o: dict, name: str) -> str:
  mean = o.get(f"{name}_mean")
  if mean is None:
    return "diverged" if name == "final_loss" else "–"
  return f"{mean:.3f} ± {o.get(f'{name}_sem', 0.0):.3f}"


def per_variant(summary: dict) -> str:
  """One table per variant: final loss, mean loss over the run, test metrics, learning rate."""
  out = []
  for variant, v in summary["variants"].items():
    metrics = sorted({k[:-5] for o in v["optimizers"].values() for k in o
                      if k.endswith("_mean") and k not in ("final_loss_mean", "loss_mean")})
    out.append(f"**{variant}** ({v['num_test_problems']} held-out runs of {v['steps']} steps)\n")
    out.append("| optimizer | final loss | mean loss over steps 1–T | "
               + " | ".join(metrics) + (" | " if metrics else "") + "learning rate |")
    out.append("| --- " * (4 + len(metrics)) + "|")
    rows = sorted(v["optimizers"].items(), key=lambda kv: np.inf if kv[1]["final_loss_mean"]
                  is None else kv[1]["final_loss_mean"])
    for name, o in rows:
      curve = [x for x in o["loss_mean"][1:] if x is not None]
      mean_loss = f"{np.mean(curve):.3f}" if len(curve) == len(o["loss_mean"]) - 1 else "–"
      lr = o["hyperparameters"].get("learning_rate")
      out.append(f"| `{name}` | {_cell(o, 'final_loss')} | {mean_loss} | "
                 + "".join(f"{_cell(o, m)} | " for m in metrics)
                 + (f"{lr:.3g}" if lr is not None else "learned") + " |")
    out.append("")
  return "\n".join(out)


def by_variant(summary: dict) -> str:
  """Final loss per optimizer (rows) and variant (columns); the best of each column in bold."""
  variants = summary["variants"]
  names = list(dict.fromkeys(n for v in variants.values() for n in v["optimizers"]))
  out = ["| optimizer | " + " | ".join(f"{k} ({v['steps']} steps)" for k, v in variants.items())
         + " |", "| --- " * (1 + len(variants)) + "|"]
  best = {k: min((o["final_loss_mean"] for o in v["optimizers"].values()
                  if o["final_loss_mean"] is not None), default=None)
          for k, v in variants.items()}
  for name in names:
    cells = []
    for k, v in variants.items():
      o = v["optimizers"].get(name)
      if o is None:
        cells.append("")
        continue
      text = _cell(o, "final_loss")
      cells.append(f"**{text}**" if o["final_loss_mean"] == best[k] else text)
    out.append(f"| `{name}` | " + " | ".join(cells) + " |")
  return "\n".join(out)


def late_rises(summary: dict, step: int, window: int = 10) -> str:
  """Per variant longer than ``step``: smoothed loss at ``step`` vs the highest after it."""
  out = []
  for variant, v in summary["variants"].items():
    if v["steps"] <= step:
      continue
    out.append(f"**{variant}** ({window}-step moving average of the mean loss over "
               f"{v['num_test_problems']} runs)\n")
    out.append(f"| optimizer | at step {step} | highest after step {step} (step) "
               "| rises above it |")
    out.append("| --- " * 4 + "|")
    for name, o in v["optimizers"].items():
      if any(x is None for x in o["loss_mean"]):
        out.append(f"| `{name}` | – | diverged | yes |")
        continue
      at, worst, where = late_rise(o["loss_mean"], step, window)
      rises = "yes" if worst > at else "no"
      out.append(f"| `{name}` | {at:.3f} | {worst:.3f} ({where}) | {rises} |")
    out.append("")
  return "\n".join(out)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("summary")
  parser.add_argument("--by-variant", action="store_true")
  parser.add_argument("--late-rise", type=int, default=None, metavar="STEP")
  parser.add_argument("--window", type=int, default=10)
  args = parser.parse_args(argv)
  summary = json.load(open(args.summary))
  if args.late_rise is not None:
    print(late_rises(summary, args.late_rise, args.window))
  else:
    print(by_variant(summary) if args.by_variant else per_variant(summary))


if __name__ == "__main__":
  main()
