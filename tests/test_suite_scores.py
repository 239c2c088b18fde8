"""The suite benchmark's scores and its docs block, on a hand-made summary (no JAX)."""

import json

import numpy as np

from experiments.report_suite import suite_block
from experiments.suite import suite_scores


def _entry(finals, initial=10.0, curve=None):
  finals = np.asarray(finals, np.float64)
  mean, sem = float(finals.mean()), float(finals.std(ddof=1) / np.sqrt(len(finals)))
  curve = curve or [initial, initial / 2, mean]
  return {"hyperparameters": {}, "loss_mean": curve, "loss_sem": [0.0] * len(curve),
          "final_loss_mean": mean, "final_loss_sem": sem, "final_losses": list(finals)}


def _summary():
  rng = np.random.default_rng(0)
  noise = lambda: rng.normal(0, 0.01, 16)
  win = {"learned": _entry(1.0 + noise()), "adam": _entry(2.0 + noise())}
  tie = {"learned": _entry(2.0 + noise()), "adam": _entry(2.0 + noise())}
  # Learned rule better at the end, but its curve rises after the meta-training horizon (2).
  rising = {"learned": _entry(1.0 + noise(), curve=[1.0] * 3 + [1.0 + 0.05 * k
                                                              for k in range(1, 19)]),
            "adam": _entry(3.0 + noise())}
  held = lambda m, opts, kind="held_out_type": {
      "steps": 2 * m, "split": "held-out", "suite_split": kind, "horizon_multiple": m,
      "num_test_problems": 16, "optimizers": opts}
  return {"experiment": "suite", "commit": "0" * 40, "device": "cpu", "meta_train_seconds": 1.0,
          "eval_seconds": 1.0, "variants": {
              "mlp/0@2": {"steps": 2, "split": "meta-train", "suite_split": "meta_train",
                          "horizon_multiple": 1, "num_test_problems": 16, "optimizers": tie},
              "conv/0@2": held(1, win), "conv/0@20": held(10, rising),
              "mlp/fashion/0@2": held(1, tie, "held_out_data")}}


def test_scores_count_wins_ties_divergences_per_group():
  scores = suite_scores(_summary())
  assert set(scores) == {"meta-train@1x", "held-out@1x", "held-out@10x", "held-out-type@1x",
                         "held-out-type@10x"}
  assert scores["held-out@1x"]["vs_adam"] == {"win": 1, "tie": 1, "loss": 0}
  assert scores["held-out-type@1x"]["tasks"] == 1
  assert scores["held-out-type@1x"]["verdicts"] == {"conv/0@2": "win"}
  assert scores["meta-train@1x"]["vs_adam"] == {"win": 0, "tie": 1, "loss": 0}
  assert scores["held-out@10x"]["diverged"] == ["conv/0@20"]
  assert scores["held-out@1x"]["diverged"] == []
  iqm = scores["held-out-type@1x"]["normalized_final_loss_iqm"]
  # Final losses over the initial loss 10: about 0.1 for the rule, 0.2 for Adam.
  assert abs(iqm["learned"]["iqm"] - 0.1) < 0.01 and abs(iqm["adam"]["iqm"] - 0.2) < 0.01
  assert iqm["learned"]["low"] <= iqm["learned"]["iqm"] <= iqm["learned"]["high"]
  assert iqm["learned"]["high"] < iqm["adam"]["low"]


def test_suite_block_has_a_row_per_group_and_per_variant(tmp_path):
  summary = _summary()
  summary["suite_scores"] = suite_scores(summary)
  path = tmp_path / "results" / "suite" / "summary.json"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps(summary))
  text = suite_block("suite", path, tmp_path)
  rows = [line for line in text.splitlines() if line.startswith("| ")]
  assert len(rows) == 2 * 2 + len(summary["suite_scores"]) + len(summary["variants"])
  assert "| held-out@1x | 2 | 1 / 1 / 0 | 1 of 2 |" in text
  assert "`conv/0@20`" in text and "`conv/0@2` | held out type | **" in text
