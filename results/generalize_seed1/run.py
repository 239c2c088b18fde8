"""make generalize's rule, meta-training seed 1; no baselines (the test runs are make generalize's).

Ran as: PYTHONPATH=. python results/generalize_seed1/run.py 1 /tmp/gen_s1 (code as at fce1002,
unchanged through 0319220, the commit summary.json records), beside CI; summary.json copied here.
Compare with the adam and rmsprop rows of results/generalize/summary.json (same test runs).
"""
import dataclasses, os, sys
from experiments import generalize
from metaopt.experiment import run_experiment
seed, out = int(sys.argv[1]), sys.argv[2]
cfg = generalize.config(data_dir=os.environ.get("METAOPT_DATA_DIR"))
cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed), extra_rules=(),
                          baselines=())
run_experiment(cfg, out, progress=False)
