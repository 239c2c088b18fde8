"""Markdown tables of the task-suite benchmark (``results/suite/summary.json``, ``make suite``).

For :mod:`experiments.report`: the block ``suite:KEY`` (docs/suite.md) holds the scores per
group of tasks (win / tie / loss against tuned Adam, normalized-loss IQMs with their bootstrap
intervals, divergences) and one row per task and horizon; ``suite-trials:KEY,KEY,...`` holds one
row per run, the held-out task types' counts of the rule (untuned and with its multiplier tuned
per task) against tuned Adam.
"""

from __future__ import annotations

import json
import pathlib

from experiments.report_results import _g, _load, _mean_sem, _num, facts_line

RULE, REFERENCE = "learned", "adam"
COLUMNS = (RULE, f"{RULE}_tuned", "adam", "rmsprop", "nag")


def _iqm(entry: dict | None) -> str:
  if not entry:
    return "–"
  return f"{_num(entry['iqm'], 3)} [{_num(entry['low'], 3)}, {_num(entry['high'], 3)}]"


def scores_table(scores: dict) -> list[str]:
  """One row per group of tasks (split and horizon)."""
  header = ["tasks", "n", f"`{RULE}` vs tuned Adam (win/tie/loss)",
            "lower mean than Adam", f"IQM `{RULE}` [95% CI]", f"IQM `{RULE}_tuned`",
            "IQM `adam` [95% CI]", "diverged"]
  lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
  for group, g in scores.items():
    c, iqms = g[f"vs_{REFERENCE}"], g["normalized_final_loss_iqm"]
    cells = [group, str(g["tasks"]), f"{c['win']} / {c['tie']} / {c['loss']}",
             f"{g[f'lower_mean_than_{REFERENCE}']} of {g['tasks']}", _iqm(iqms.get(RULE)),
             _iqm(iqms.get(f"{RULE}_tuned")), _iqm(iqms.get(REFERENCE)),
             ", ".join(f"`{n}`" for n in g["diverged"]) or "none"]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _cell(o: dict | None, bold: bool) -> str:
  if o is None:
    return ""
  hp = o.get("hyperparameters", {})
  text = _mean_sem(o, "final_loss")
  text = f"**{text}**" if bold else text
  if "learning_rate" in hp:
    text += f" (lr {_g(hp['learning_rate'])})"
  elif "learning_rate_multiplier" in hp:
    text += f" (×{_g(hp['learning_rate_multiplier'])})"
  return text


def tasks_table(variants: dict, verdicts: dict) -> list[str]:
  """Final loss (mean ± s.e.m. over the test runs) per task and horizon; the lowest in bold."""
  header = ["task @ steps", "split", *[f"`{c}`" for c in COLUMNS], f"`{RULE}` vs Adam"]
  lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
  for name, v in variants.items():
    opts = v["optimizers"]
    finals = [opts[c]["final_loss_mean"] for c in COLUMNS
              if c in opts and opts[c]["final_loss_mean"] is not None]
    best = min(finals) if finals else None
    cells = [f"`{name}`", v.get("suite_split", v.get("split", "")).replace("_", " ")]
    cells += [_cell(opts.get(c), c in opts and opts[c]["final_loss_mean"] == best)
              for c in COLUMNS]
    cells.append(verdicts.get(name, ""))
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _rule_step_ratio(root: pathlib.Path) -> str | None:
  path = root / "results" / "bench" / "bench.json"
  if not path.exists():
    return None
  rows = [r for r in json.loads(path.read_text()).get("rule_step", [])
          if r.get("rule") == "mlp" and r["num_params"] >= 10 ** 5]
  if not rows:
    return None
  return ", ".join(f"{r['adam_ratio']:.1f}× Adam's time at {r['num_params']:.0e} parameters"
                   for r in rows)


def _lower_mean_count(variants: dict, horizon: int, rule: str) -> str:
  """'k of n': held-out-type tasks at this horizon where `rule`'s mean final loss is below Adam's.

  A non-finite mean (stored as None) counts as a loss.
  """
  def final(o: dict) -> float:
    value = o["final_loss_mean"]
    return float("inf") if value is None else value

  pairs = [(final(v["optimizers"][rule]), final(v["optimizers"][REFERENCE]))
           for v in variants.values()
           if v.get("suite_split") == "held_out_type" and v["horizon_multiple"] == horizon
           and rule in v["optimizers"] and REFERENCE in v["optimizers"]]
  return f"{sum(r < a for r, a in pairs)} of {len(pairs)}"


def trials_table(keys: list[str], summaries: dict) -> str:
  """One row per suite run: its validation, and held-out types' lower-mean counts against Adam."""
  header = ["run", "validation (first → best)",
            *[f"`{r}` < Adam @{h}x" for h in (1, 10) for r in COLUMNS[:2]], "diverged @10x"]
  lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
  for key in keys:
    s = _load(summaries[key])
    losses = s["meta_train_history"]["valid_loss"]
    diverged = (s.get("suite_scores") or {}).get("held-out-type@10x", {}).get("diverged", [])
    cells = [f"`results/{key}`", f"{losses[0]:.3f} → {min(losses):.3f}",
             *[_lower_mean_count(s["variants"], h, r) for h in (1, 10) for r in COLUMNS[:2]],
             str(len(diverged))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def suite_block(key: str, path: pathlib.Path, root: pathlib.Path) -> str:
  s = _load(path)
  scores = s.get("suite_scores") or {}
  verdicts = {n: v for g in scores.values() for n, v in g["verdicts"].items()}
  lines = [facts_line(key, path, root, s), ""]
  for note in sorted(k for k in s if k.endswith("_note")):
    lines += [f"Note ({note}): {s[note]}", ""]
  lines += scores_table(scores)
  ratio = _rule_step_ratio(root)
  if ratio:
    lines += ["", f"The rule's optax step (`make bench`, results/bench/bench.json): {ratio}."]
  lines += ["", *tasks_table(s["variants"], verdicts)]
  return "\n".join(lines) + "\n"
