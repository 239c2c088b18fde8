import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import metaopt
from metaopt import MetaTrainConfig, Truncation, Validation
from metaopt.command_line import default_extra_rules, only_extra_rules, with_seed
from metaopt.experiment import ExperimentConfig, ExtraRule, Variant, run_experiment
from metaopt.networks import LSTMConfig
from metaopt.problems import QuadraticFamily

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_tiny_experiment_writes_summary_plot_and_a_loadable_rule(tmp_path):
  cfg = ExperimentConfig(
      name="quadratic", family=QuadraticFamily(dim=4), lstm=LSTMConfig((8,)),
      train=MetaTrainConfig(truncation=Truncation(horizon=10, unroll_length=5), batch_size=8,
                            num_meta_steps=4, validation=Validation(every=2, num_problems=4)),
      eval_steps=10, num_test_problems=6, num_tune_problems=4, lr_grid=(1e-3, 1e-2, 1e-1, 1.0))
  summary = run_experiment(cfg, tmp_path, progress=False)
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  for key in ("experiment", "commit", "device", "jax_version", "meta_train_seconds",
              "eval_seconds"):
    assert key in on_disk
  assert on_disk["malloc"].split(" ")[0] in ("system", "tcmalloc", "jemalloc", "mimalloc")
  # The meta-training record: the nested configuration and the validation history.
  assert MetaTrainConfig.from_dict(on_disk["meta_train_config"]) == cfg.train
  assert on_disk["lstm_config"] == json.loads(json.dumps(cfg.lstm.to_dict()))
  history = on_disk["meta_train_history"]
  assert set(history) == {"valid_step", "valid_loss", "valid_horizon", "restored_at",
                          "stage_start", "num_skipped"}
  assert history["valid_step"] == [0, 2, 4] and history["valid_horizon"] == [10, 10, 10]
  assert len(history["valid_loss"]) == 3 and history["num_skipped"] == 0
  base = on_disk["variants"]["base"]
  assert base["steps"] == 10 and base["num_test_problems"] == 6
  assert set(base["optimizers"]) == {"lstm", "sgd", "rmsprop", "adam", "nag"}
  for name, o in base["optimizers"].items():
    assert len(o["loss_mean"]) == len(o["loss_sem"]) == 11
    assert o["final_loss_mean"] == o["loss_mean"][-1]
    if name != "lstm":
      rates = sorted(float(r) for r in o["lr_grid"])
      assert rates[0] < o["hyperparameters"]["learning_rate"] < rates[-1]
  # Every optimizer starts from the same theta_0 on the same test problems.
  starts = {o["loss_mean"][0] for o in base["optimizers"].values()}
  assert len(starts) == 1
  assert (tmp_path / "curves.png").stat().st_size > 1000
  phi, config, meta = metaopt.checkpoint.load_meta_params(tmp_path / "lstm.msgpack")
  assert config == cfg.lstm and meta["experiment"] == "quadratic"
  assert MetaTrainConfig.from_dict(meta["train"]) == cfg.train
  assert meta["best_valid_loss"] == min(history["valid_loss"])
  rule = metaopt.learned_rule(phi, config)
  updates, _ = rule.update(np.ones(4, np.float32), rule.init(np.ones(4, np.float32)))
  assert np.all(np.isfinite(updates))


def test_extra_rules_are_trained_saved_and_evaluated_on_their_variants(tmp_path):
  train = MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), batch_size=4,
                          num_meta_steps=2, validation=Validation(every=2, num_problems=2))
  small, big = QuadraticFamily(dim=3), QuadraticFamily(dim=5)
  cfg = ExperimentConfig(
      name="q", family=small, lstm=LSTMConfig((4,)), train=train, eval_steps=4,
      variants=(Variant("small", small, 4), Variant("big", big, 4, retune=True, tune_family=small)),
      extra_rules=(ExtraRule("lstm_other", big, LSTMConfig((6,)), train, variants=("big",)),),
      baselines=("sgd",), num_test_problems=3, num_tune_problems=2, lr_grid=(1e-3, 1e-2, 1e-1))
  summary = run_experiment(cfg, tmp_path, progress=False)
  assert not (tmp_path / "summary.partial.json").exists()  # replaced by the complete summary
  assert set(summary["variants"]["small"]["optimizers"]) == {"lstm", "sgd"}
  big_opts = summary["variants"]["big"]["optimizers"]
  assert set(big_opts) == {"lstm", "lstm_other", "sgd", "sgd_retuned"}
  # Re-tuned on tune_family (dim 3: the very problems of the base tuning), not on the
  # variant's own dim-5 family, which would give different grid losses.
  small_opts = summary["variants"]["small"]["optimizers"]
  assert big_opts["sgd_retuned"]["lr_grid"] == small_opts["sgd"]["lr_grid"]
  assert summary["extra_rules"]["lstm_other"]["lstm_config"]["hidden_sizes"] == [6]
  phi, config, _ = metaopt.checkpoint.load_meta_params(tmp_path / "lstm_other.msgpack")
  assert config == LSTMConfig((6,))
  with pytest.raises(ValueError, match="unknown variants"):
    ExperimentConfig(name="q", family=small, lstm=LSTMConfig(), train=train,
                     extra_rules=(ExtraRule("lstm_x", small, LSTMConfig(), train, ("nope",)),))
  with pytest.raises(ValueError, match="distinct"):
    ExperimentConfig(name="q", family=small, lstm=LSTMConfig(), train=train,
                     extra_rules=(ExtraRule("lstm", small, LSTMConfig(), train),))


def test_only_extra_rules_keeps_the_named_rules_and_optional_rules_run_only_when_named():
  train = MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), num_meta_steps=1)
  fam = QuadraticFamily(dim=3)
  rules = tuple(ExtraRule(n, fam, LSTMConfig((4,)), train) for n in ("lstm_a", "lstm_b", "lstm_c"))
  cfg = ExperimentConfig(name="q", family=fam, lstm=LSTMConfig((4,)), train=train,
                         extra_rules=rules)
  picked = only_extra_rules(cfg, ["lstm_c", "lstm_a"])
  assert [r.name for r in picked.extra_rules] == ["lstm_a", "lstm_c"]
  assert picked.lstm == cfg.lstm and picked.variants == cfg.variants
  assert only_extra_rules(cfg, []).extra_rules == ()
  with pytest.raises(ValueError, match=r"unknown rules \['lstm_x'\]"):
    only_extra_rules(cfg, ["lstm_a", "lstm_x"])
  # An optional rule is left out of a default run and runs when named.
  optional = dataclasses.replace(rules[2], optional=True)
  cfg = dataclasses.replace(cfg, extra_rules=rules[:2] + (optional,))
  assert [r.name for r in default_extra_rules(cfg).extra_rules] == ["lstm_a", "lstm_b"]
  assert [r.name for r in only_extra_rules(cfg, ["lstm_c"]).extra_rules] == ["lstm_c"]


def test_seed_flag_meta_trains_every_rule_from_that_seed_into_its_own_folder(tmp_path,
                                                                            monkeypatch):
  import metaopt.command_line as command_line
  train = MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), num_meta_steps=1,
                          seed=0)
  fam = QuadraticFamily(dim=3)
  rules = (ExtraRule("lstm_a", fam, LSTMConfig((4,)), dataclasses.replace(train, seed=5)),
           ExtraRule("lstm_b", fam, LSTMConfig((4,)), train, optional=True))
  cfg = ExperimentConfig(name="q", family=fam, lstm=LSTMConfig((4,)), train=train,
                         extra_rules=rules, seed=7)
  seeded = with_seed(cfg, 3)
  assert seeded.train == dataclasses.replace(train, seed=3)
  assert [r.train.seed for r in seeded.extra_rules] == [3, 3]
  assert seeded.seed == 7                      # the tuning and test problems stay the same
  calls = []

  def fake_run(cfg, out, progress, checkpoint_dir, resume):
    calls.append((cfg, pathlib.Path(out), pathlib.Path(checkpoint_dir), resume))
    return {"ok": True}

  monkeypatch.setattr(command_line, "run_experiment", fake_run)
  monkeypatch.chdir(tmp_path)
  for var in ("QUICK", "RESUME", "RULES"):
    monkeypatch.delenv(var, raising=False)
  assert command_line.main("q", lambda quick: cfg, ["--seed", "3", "--no-progress"]) == {"ok": True}
  ran, out, checkpoints, resume = calls[-1]
  assert out == pathlib.Path("results", "q_seed3") and not resume
  assert checkpoints.parts[-2:] == ("results", "q_seed3")
  assert ran.train.seed == 3 and [r.name for r in ran.extra_rules] == ["lstm_a"]
  assert ran.extra_rules[0].train.seed == 3
  command_line.main("q", lambda quick: cfg, ["--rules", "lstm_b", "--no-progress"])
  ran, out, _, _ = calls[-1]
  assert out == pathlib.Path("results", "q") and ran.train.seed == 0
  assert [(r.name, r.train.seed) for r in ran.extra_rules] == [("lstm_b", 0)]


def test_variants_done_survive_a_failure_in_a_later_one(tmp_path, monkeypatch):
  import metaopt.experiment as experiment
  real = experiment.evaluate_variant

  def failing_on_second(cfg, variant, *args):
    if variant.name == "second":
      raise RuntimeError("killed")
    return real(cfg, variant, *args)

  monkeypatch.setattr(experiment, "evaluate_variant", failing_on_second)
  fam = QuadraticFamily(dim=3)
  cfg = ExperimentConfig(
      name="q", family=fam, lstm=LSTMConfig((4,)), eval_steps=4, baselines=("sgd",),
      train=MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), batch_size=4,
                            num_meta_steps=2, validation=Validation(every=2, num_problems=2)),
      variants=(Variant("first", fam, 4), Variant("second", fam, 4)),
      num_test_problems=3, num_tune_problems=2, lr_grid=(1e-3, 1e-2, 1e-1))
  with pytest.raises(RuntimeError, match="killed"):
    run_experiment(cfg, tmp_path, progress=False)
  partial = json.loads((tmp_path / "summary.partial.json").read_text())
  assert list(partial["variants"]) == ["first"] and not (tmp_path / "summary.json").exists()
  assert set(partial["variants"]["first"]["optimizers"]) == {"lstm", "sgd"}


def test_a_baselines_test_runs_reuse_its_tuning_program():
  from metaopt.experiment import evaluate_variant
  from metaopt.unroll import jitted_loss_curves

  fam = QuadraticFamily(dim=3)
  cfg = ExperimentConfig(
      name="q", family=fam, lstm=LSTMConfig((4,)), eval_steps=4, baselines=("adam",),
      train=MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), batch_size=4,
                            num_meta_steps=2, validation=Validation(every=2, num_problems=2)),
      variants=(Variant("v", fam, 4, retune=True, reuse_tuned=False),),
      num_test_problems=5, num_tune_problems=2, lr_grid=(1e-3, 1e-2, 1e-1))
  jitted_loss_curves.clear_cache()
  out = evaluate_variant(cfg, cfg.variants[0], {}, {})
  assert set(out["optimizers"]) == {"adam"}
  assert len(out["optimizers"]["adam"]["final_losses"]) == 5
  assert jitted_loss_curves._cache_size() == 1   # grid, extensions and test runs: one program


def test_a_variant_tuned_near_another_searches_around_its_rates(tmp_path):
  fam = QuadraticFamily(dim=3)
  short = Variant("short", fam, 4, retune=True, reuse_tuned=False)
  long = Variant("long", fam, 12, retune=True, reuse_tuned=False, tune_near="short",
                 baselines=("adam",), num_tune_problems=2)
  cfg = ExperimentConfig(
      name="q", family=fam, lstm=LSTMConfig((4,)), eval_steps=4, baselines=("sgd", "adam"),
      train=MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), batch_size=4,
                            num_meta_steps=2, validation=Validation(every=2, num_problems=2)),
      variants=(short, long), num_test_problems=4, num_tune_problems=4,
      lr_grid=(1e-3, 1e-2, 1e-1, 1.0), tune_rule_multiplier=True, multiplier_grid=(0.1, 1, 10))
  variants = run_experiment(cfg, tmp_path, progress=False)["variants"]
  assert set(variants["short"]["optimizers"]) == {"lstm", "lstm_tuned", "sgd", "adam"}
  assert set(variants["long"]["optimizers"]) == {"lstm", "lstm_tuned", "adam"}
  assert sorted(float(m) for m in variants["short"]["optimizers"]["lstm_tuned"]["lr_grid"])[:3] \
      == [0.1, 1.0, 10.0]
  for name, key in (("adam", "learning_rate"), ("lstm_tuned", "learning_rate_multiplier")):
    center = variants["short"]["optimizers"][name]["hyperparameters"][key]
    rates = sorted(float(r) for r in variants["long"]["optimizers"][name]["lr_grid"])
    # Half-decade steps from the short variant's rate, both neighbours searched.
    steps = [2 * np.log10(r / center) for r in rates]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert min(steps) <= -1 + 1e-4 and max(steps) >= 1 - 1e-4 and len(rates) <= 3 + 6
  # The untuned rule is the tuned rule's program at multiplier 1.
  assert variants["long"]["optimizers"]["lstm"]["hyperparameters"].get(
      "learning_rate_multiplier") is None


def test_test_runs_in_chunks_give_what_one_call_gives():
  from metaopt.baselines import BASELINES
  from metaopt.experiment import _test_curves
  from metaopt.unroll import sample_tasks

  fam = QuadraticFamily(dim=3)
  tasks, keys = sample_tasks(fam, jax.random.key(3), 6)
  whole = _test_curves(BASELINES["adam"], fam, tasks, keys, 5, (0.1,), 6)
  for chunk in (2, 4):   # 4: the last chunk is filled up with repeats, then dropped
    chunks = _test_curves(BASELINES["adam"], fam, tasks, keys, 5, (0.1,), chunk)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunks)):
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, rtol=1e-6)
  assert not np.allclose(whole[0][0], whole[0][1])   # different runs, in their order


def test_bad_experiment_configuration_is_rejected_before_any_compute():
  import pytest

  base = dict(name="q", family=QuadraticFamily(), lstm=LSTMConfig(), train=MetaTrainConfig())
  with pytest.raises(ValueError, match=r"baselines: unknown \['adamw'\]; allowed"):
    ExperimentConfig(**base, baselines=("adam", "adamw"))
  with pytest.raises(ValueError, match="lr_grid must hold at least 3 positive"):
    ExperimentConfig(**base, lr_grid=())
  with pytest.raises(ValueError, match="lr_grid must hold at least 3 positive"):
    ExperimentConfig(**base, lr_grid=(0.0, 0.1, 1.0))
  with pytest.raises(ValueError, match="num_test_problems must be a positive integer"):
    ExperimentConfig(**base, num_test_problems=0)
  fam = base["family"]
  a = Variant("a", fam, 4, retune=True, reuse_tuned=False)
  later = Variant("b", fam, 8, retune=True, reuse_tuned=False, tune_near="c")
  with pytest.raises(ValueError, match="tune_near='c' must name an earlier variant"):
    ExperimentConfig(**base, variants=(a, later))
  with pytest.raises(ValueError, match=r"baselines \['adamw'\] are not among"):
    ExperimentConfig(**base, variants=(Variant("a", fam, 4, baselines=("adamw",)),))


def test_unknown_problem_family_name_is_rejected():
  import pytest

  from metaopt.problems import make_family

  with pytest.raises(ValueError, match=r"unknown problem family 'cifar'; "
                                       r"expected one of \['conv', 'mlp', 'quadratic'\]"):
    make_family("cifar")
  assert make_family("quadratic", dim=3).dim == 3


def test_quick_quadratic_make_target_runs_end_to_end(tmp_path, monkeypatch):
  import experiments.quadratic

  monkeypatch.chdir(tmp_path)
  # --quick sets XLA_FLAGS for its own process; keep that from leaking into later tests'
  # subprocesses (other compile flags change float results in the last bit).
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  jax.devices()  # start the backend first: the flag then cannot change this process either
  summary = experiments.quadratic.main(["--quick", "--no-progress"])
  written = json.loads((tmp_path / "results" / "quick" / "quadratic" / "summary.json").read_text())
  assert written["variants"]["base"]["num_test_problems"] == 32
  lstm = summary["variants"]["base"]["optimizers"]["lstm"]
  assert lstm["final_loss_mean"] < lstm["loss_mean"][0]
  checkpoints = tmp_path / ".cache" / "checkpoints" / "quick" / "quadratic"
  assert [p for p in checkpoints.glob("step_*") if p.is_dir()]  # orbax step folders


@pytest.mark.skipif(not pathlib.Path(TCMALLOC).exists(), reason="tcmalloc not installed")
def test_malloc_in_use_sees_a_preloaded_tcmalloc():
  code = "from metaopt.evaluate import malloc_in_use; print(malloc_in_use())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "LD_PRELOAD": TCMALLOC})
  assert out.stdout.strip() == "tcmalloc"


def test_malloc_description_names_the_c_librarys_malloc_tunables():
  code = "from metaopt.evaluate import malloc_description; print(malloc_description())"
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  run = lambda tunables: subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=True,
      env={**env, "GLIBC_TUNABLES": tunables}).stdout.strip()
  described = run("glibc.malloc.hugetlb=1:glibc.rtld.optional_static_tls=512")
  assert described.startswith("system (glibc.malloc.hugetlb=1; THP ")
  assert "rtld" not in described
  assert run("") == "system"


def test_late_rise_smooths_one_step_bumps_and_catches_late_divergence():
  from metaopt.evaluate import late_rise
  steps = np.arange(301)
  falling = 2.0 * np.exp(-steps / 50) + 0.3
  bumped = falling.copy()
  bumped[105] += 0.05                                   # one noisy minibatch after step 100
  at, worst, where = late_rise(bumped, 100, window=1)
  assert worst > at and where == 105
  at, worst, _ = late_rise(bumped, 100, window=10)
  assert worst <= at
  diverging = falling.copy()
  diverging[250:] += np.linspace(0.0, 1.0, 51)
  at, worst, where = late_rise(diverging, 100, window=10)
  assert worst > at and where == 300
  assert late_rise(falling, 100, window=10)[0] == pytest.approx(falling[91:101].mean())
  with pytest.raises(ValueError, match="late_rise needs"):
    late_rise(falling, 5, window=10)


def test_git_commit_is_metaopt_commit_when_set_else_the_checkout(monkeypatch):
  from metaopt import evaluate
  monkeypatch.delenv("METAOPT_COMMIT", raising=False)
  head = evaluate.git_commit()
  assert len(head) == 40 and int(head, 16) >= 0  # this checkout's commit
  monkeypatch.setenv("METAOPT_COMMIT", "copied-tree")  # a copied tree may hold a stale .git
  assert evaluate.git_commit() == "copied-tree"
  monkeypatch.delenv("METAOPT_COMMIT")
  def no_git(*args, **kwargs):
    raise OSError("no git here")
  monkeypatch.setattr(evaluate.subprocess, "run", no_git)
  assert evaluate.git_commit() == "unknown"
