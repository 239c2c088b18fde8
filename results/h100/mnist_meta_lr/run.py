"""GPU probe: make mnist (1800 meta-steps) at other meta-learning rates; base/steps200/hidden40/layers2."""
import dataclasses, sys, json
from experiments import mnist
from metaopt.experiment import run_experiment
for lr in (float(x) for x in sys.argv[2:]):
  cfg = mnist.config(quick=bool(__import__("os").environ.get("QUICK")))
  train = dataclasses.replace(cfg.train, meta_learning_rate=lr)
  variants = tuple(dataclasses.replace(v, retune=False) for v in cfg.variants[:4])
  cfg = dataclasses.replace(cfg, train=train, variants=variants, name=f"mnist_lr{lr:g}")
  s = run_experiment(cfg, f"/tmp/lr{lr:g}", progress=False)
  json.dump(s, open(f"{sys.argv[1]}/lr{lr:g}.json", "w"))
