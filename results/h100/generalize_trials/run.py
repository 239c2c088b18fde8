"""H100 trials for issue #9 (trials.json): make generalize's rule with imitation of Adam.

python run.py NAME OUT [--quick]: meta-train candidate NAME with make generalize's settings as
at e0aac5b (no imitation, no phi averaging; experiments/generalize.py) plus the candidate's
changes, and evaluate it on the five MNIST/Fashion tasks (CIFAR-10 was too large to carry to
the device), 64 test runs, Adam tuned per task (candidate 'range' only). run.sh ran the
candidates, seven then nine at a time, from a git-ignored .devrun/ folder of the repo with the
MNIST and Fashion-MNIST files in .devdata/.
"""
import dataclasses, json, os, sys
from experiments import generalize
from experiments.generalize_ablation import WITHOUT_LATER_OPTIONS
from metaopt.data import load_dataset
from metaopt.experiment import Variant, run_experiment
from metaopt.problems.mlp import MLPFamily

CANDIDATES = {   # name -> (changes to generalize.train_config(), run the Adam baseline?)
    "range": (dict(imitation_prob=0.5, imitation_learning_rate=0.01,
                   imitation_max_learning_rate=0.0316), True),
    "range_s1": (dict(imitation_prob=0.5, imitation_learning_rate=0.01,
                      imitation_max_learning_rate=0.0316, seed=1), False),
    "range250": (dict(imitation_prob=0.5, imitation_learning_rate=0.01,
                      imitation_max_learning_rate=0.0316, num_meta_steps=250), False),
    "fixed0316": (dict(imitation_prob=0.5, imitation_learning_rate=0.0316), False),
    "range_s2": (dict(imitation_prob=0.5, imitation_learning_rate=0.01,
                      imitation_max_learning_rate=0.0316, seed=2), False),
    "range250_s1": (dict(imitation_prob=0.5, imitation_learning_rate=0.01,
                         imitation_max_learning_rate=0.0316, num_meta_steps=250, seed=1), False),
    "range_p25": (dict(imitation_prob=0.25, imitation_learning_rate=0.01,
                       imitation_max_learning_rate=0.0316), False),
}
R = dict(imitation_prob=0.5, imitation_learning_rate=0.01, imitation_max_learning_rate=0.0316)
R25 = dict(R, imitation_prob=0.25)
for seed in (0, 1, 2):
  CANDIDATES[f"final_s{seed}"] = (dict(R, valid_objective="final", seed=seed), False)
  CANDIDATES[f"avg_s{seed}"] = (dict(R, phi_average=0.98, seed=seed), False)
CANDIDATES["p25_s1"] = (dict(R25, seed=1), False)
CANDIDATES["p25_s2"] = (dict(R25, seed=2), False)
CANDIDATES["final_p25"] = (dict(R25, valid_objective="final"), False)

name, out, quick = sys.argv[1], sys.argv[2], "--quick" in sys.argv
change, with_adam = CANDIDATES[name]
# generalize.variants without the CIFAR-10 variant (its data does not travel).
data_dir = os.environ.get("METAOPT_DATA_DIR")
mnist, fashion = load_dataset("mnist", data_dir), load_dataset("fashion_mnist", data_dir)
net = lambda ds, **kw: MLPFamily.from_dataset(ds, init_scale=0.01, batch_size=128, **kw)
steps = 10 if quick else 100
per_task = dict(retune=True, reuse_tuned=False)
variants = (
    Variant("steps1000", net(mnist), 10 * steps, **per_task),
    Variant("relu", net(mnist, activation="relu"), steps, **per_task),
    Variant("layers2", net(mnist, hidden_sizes=(20, 20)), steps, **per_task),
    Variant("hidden40", net(mnist, hidden_sizes=(40,)), steps, **per_task),
    Variant("fashion_mnist", net(fashion), steps,
            test_data=(fashion.test_images, fashion.test_labels), **per_task),
)
generalize.variants = lambda quick, data_dir: variants
generalize.load_dataset = lambda n, d=None: mnist
cfg = generalize.config(quick=quick, data_dir=data_dir)
train = dataclasses.replace(cfg.train, **{**WITHOUT_LATER_OPTIONS, **change})
if quick:
  train = dataclasses.replace(train, num_meta_steps=min(train.num_meta_steps, 8))
cfg = dataclasses.replace(cfg, name=f"generalize_{name}", train=train, variants=variants,
                          extra_rules=(), baselines=("adam",) if with_adam else ())
summary = run_experiment(cfg, out, progress=False)
