"""GPU probe: make mnist as at 8654e6b (1800 meta-steps, 100-step validation every 50) at other
meta-learning rates; variants base/steps200/hidden40/layers2, baselines not re-tuned.

Usage: python run.py OUT_DIR LR [LR ...]  (ran as: run.py $OUT 0.01 0.006)
"""
import dataclasses, sys, json
from experiments import mnist
from metaopt.experiment import run_experiment
for lr in (float(x) for x in sys.argv[2:]):
  cfg = mnist.config(quick=bool(__import__("os").environ.get("QUICK")))
  train = dataclasses.replace(cfg.train, meta_learning_rate=lr)
  if not __import__("os").environ.get("QUICK"):  # the settings of make mnist when this ran
    train = dataclasses.replace(train, num_meta_steps=1800, valid_every=50,
                                valid_horizon_multiple=1)
  variants = tuple(dataclasses.replace(v, retune=False) for v in cfg.variants[:4])
  cfg = dataclasses.replace(cfg, train=train, variants=variants, name=f"mnist_lr{lr:g}")
  s = run_experiment(cfg, f"/tmp/lr{lr:g}", progress=False)
  json.dump(s, open(f"{sys.argv[1]}/lr{lr:g}.json", "w"))
