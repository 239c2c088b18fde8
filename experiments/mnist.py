"""The paper's section 3.2: MNIST MLPs (its Figures 4 and 5).

Meta-train on the base net (one hidden layer of 20 sigmoid units, 100 steps),
then evaluate, without retraining, on 200 steps, 40 hidden units, 2 hidden
layers and ReLU. Run: ``make mnist`` (full) or ``QUICK=1 make mnist``.
"""

from __future__ import annotations

from metaopt import command_line
from metaopt.config import MetaTrainConfig
from metaopt.data import load_dataset
from metaopt.experiment import ExperimentConfig, Variant
from metaopt.networks import LSTMConfig
from metaopt.problems.mlp import MLPFamily, classification_metrics
from metaopt.truncation import Truncation
from metaopt.validation import Validation


def config(quick: bool = False, data_dir: str | None = None) -> ExperimentConfig:
  """The paper's MNIST settings; ``quick`` shrinks meta-training and evaluation."""
  ds = load_dataset("mnist", data_dir)
  family = lambda **kw: MLPFamily.from_dataset(ds, init_scale=0.01, batch_size=128, **kw)
  base = family(hidden_sizes=(20,), activation="sigmoid")
  lstm = LSTMConfig(hidden_sizes=(20, 20), preprocessing="log_sign", preprocess_p=10.0,
                    output_scale=0.1)
  train = MetaTrainConfig(
      truncation=Truncation(horizon=20 if quick else 100, unroll_length=10 if quick else 20),
      batch_size=2,                             # problems per meta-step (1 collapses)
      num_meta_steps=10 if quick else 2000,
      meta_learning_rate=6e-3,                  # 3e-3 needs ~3000 meta-steps (make mnist-long)
      clip_norm=1.0,
      validation=Validation(
          every=5 if quick else 100, num_problems=2 if quick else 16,
          score="final",                        # keep the phi with the best final loss ...
          horizon_multiple=2,                   # ... scored at steps 100 and 200 of 200-step runs
          collapse_factor=1.5),                 # restore the best phi if validation degrades 1.5x
      run_mode="sequential",                    # two large runs: one after the other on a CPU
  )
  steps = 10 if quick else 100
  variants = (
      Variant("base", base, steps),
      Variant("steps200", base, 2 * steps),
      Variant("hidden40", family(hidden_sizes=(40,)), steps, retune=True),
      Variant("layers2", family(hidden_sizes=(20, 20)), steps, retune=True),
      Variant("relu", family(hidden_sizes=(20,), activation="relu"), steps, retune=True),
  )
  return ExperimentConfig(
      name="mnist", family=base, lstm=lstm, train=train, eval_steps=steps, variants=variants,
      num_test_problems=4 if quick else 100, num_tune_problems=4 if quick else 32,
      lr_grid=(1e-3, 1e-2, 1e-1, 1.0) if quick else tuple(10.0 ** (k / 2) for k in range(-8, 3)),
      test_metrics=classification_metrics, test_data=(ds.test_images, ds.test_labels),
  )


def main(argv=None) -> dict:
  return command_line.main("mnist", config, argv, __doc__, data=True)


if __name__ == "__main__":
  main()
