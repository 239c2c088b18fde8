"""CPU probe: make mnist (current config) with meta-training seed 1."""
import dataclasses
from experiments import mnist
from metaopt.experiment import run_experiment
cfg = mnist.config()
cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1), name="mnist_seed1")
run_experiment(cfg, "/tmp/runs/mnist_seed1", progress=False,
               checkpoint_dir="/work/main/.cache/checkpoints/seed1")
