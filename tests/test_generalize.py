"""The generalization options: RNNprop inputs, augmentation, curriculum."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import MetaTrainConfig, Truncation, Validation, meta_train
from metaopt.experiment import ExperimentConfig, ExtraRule, Variant, run_experiment
from metaopt.meta_step import prepare
from metaopt.networks import LSTMConfig, init_meta_params
from metaopt.preprocess import adam_features
from metaopt.problems import QuadraticFamily
from metaopt.problems.augment import AugmentedFamily
from metaopt.unroll import sample_tasks
from metaopt.validation import VALIDATION_SET, validation_score

RNNPROP = LSTMConfig((8,), preprocessing="rnnprop", output_activation="tanh", output_scale=0.1)


def test_adam_features_are_adams_normalized_direction():
  g = jax.random.normal(jax.random.key(0), (5, 7, 3))
  adam = optax.scale_by_adam(b1=0.9, b2=0.99, eps=1e-8)
  state = adam.init(jnp.zeros(3))
  m = v = jnp.zeros(3)
  for t in range(5):
    direction, state = adam.update(g[t, 0], state)
    features, m, v = jax.jit(adam_features, static_argnums=(4, 5))(g[t, 0], m, v, t + 1, 0.9, 0.99)
    np.testing.assert_allclose(features[0], direction, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(features[1] * (features[0] / features[1]),
                             features[0], rtol=1e-5)


def test_rnnprop_rule_is_invariant_to_gradient_scale_and_bounded():
  phi = jax.tree.map(lambda x: 30.0 * x, init_meta_params(RNNPROP, jax.random.key(0)))
  opt = metaopt.learned_rule(phi, RNNPROP)
  grads = jax.random.normal(jax.random.key(1), (6, 4, 5))

  @jax.jit
  def run(scale):
    def step(state, g):
      u, state = opt.update({"w": scale * g}, state)
      return state, u["w"]
    return jax.lax.scan(step, opt.init({"w": jnp.zeros((4, 5))}), grads)

  state, small = run(1e-1)
  _, large = run(1e3)
  np.testing.assert_allclose(small, large, rtol=1e-4, atol=1e-7)
  assert np.max(np.abs(large)) <= 0.1 + 1e-6 and np.max(np.abs(large)) > 1e-3
  assert int(state.moments.count) == 6 and state.moments.m["w"].shape == (4, 5)
  # The paper's rule has no moments in its state.
  assert metaopt.learned_rule(init_meta_params(LSTMConfig(), jax.random.key(0))).init(
      {"w": jnp.zeros(2)}).moments == ()


def test_augmented_family_rescales_parameters_and_adds_a_convex_term():
  base = QuadraticFamily(dim=6)
  key = jax.random.key(3)
  plain = AugmentedFamily(base, max_log_scale=1.5, convex_prob=0.0)
  task = jax.jit(plain.sample_task)(key)
  c = jnp.exp(task.log_scale)
  assert float(jnp.min(c)) < 0.9 and float(jnp.max(c)) > 1.1 and float(task.quad_weight) == 0
  theta, _ = plain.init(task, key)
  base_theta, _ = base.init(task.task, key)
  np.testing.assert_allclose(c * theta, base_theta, rtol=1e-6)   # same starting point
  probe = jax.random.normal(jax.random.key(4), (6,))
  (f, _), g = jax.value_and_grad(plain.loss, has_aux=True)(probe, (), task, key)
  (f0, _), g0 = jax.value_and_grad(base.loss, has_aux=True)(c * probe, (), task.task, key)
  np.testing.assert_allclose(f, f0, rtol=1e-6)
  np.testing.assert_allclose(g, c * g0, rtol=1e-5)                # chain rule: scaled gradients
  convex = AugmentedFamily(base, max_log_scale=1.5, convex_prob=1.0, convex_weight_range=(0.5, 0.5))
  task = convex.sample_task(key)
  f1, _ = convex.loss(probe, (), task, key)
  f0, _ = base.loss(jnp.exp(task.log_scale) * probe, (), task.task, key)
  np.testing.assert_allclose(f1 - f0, 0.25 * jnp.sum((probe - task.quad_center) ** 2), rtol=1e-5)
  with pytest.raises(ValueError, match="convex_prob"):
    AugmentedFamily(base, convex_prob=2.0)


def test_curriculum_moves_to_longer_horizons_when_validation_stalls():
  # A meta-learning rate too small to change phi: every validation stalls.
  cfg = MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2, curriculum=(6, 10)),
                        batch_size=2, num_meta_steps=8, meta_learning_rate=1e-30,
                        validation=Validation(every=2, num_problems=2))
  fam, config = QuadraticFamily(dim=3), LSTMConfig((4,))
  result = meta_train(fam, config, cfg, progress=False)
  h = result.history
  assert h.stage_start == [2, 4]
  assert h.valid_horizon == [4, 4, 6, 6, 10, 10, 10]
  assert h.valid_step == [0, 2, 2, 4, 4, 6, 8]
  # Each stage scores the (unchanged) phi on the fixed validation set at its own horizon.
  phi = prepare(fam, config, cfg).state.phi
  tasks, keys = sample_tasks(fam, jax.random.fold_in(jax.random.key(cfg.seed), VALIDATION_SET), 2)
  for horizon, i in ((4, 0), (6, 2), (10, 4)):
    expected = validation_score(phi, config, fam, tasks, keys, horizon, cfg.validation)
    assert h.valid_loss[i] == pytest.approx(expected, rel=1e-5), horizon
  # The best phi is scored on the last stage's horizon.
  assert result.best_valid_loss == min(h.valid_loss[4:])
  assert len(h.meta_loss) == 8 and result.num_skipped == 0


def test_experiment_with_an_augmented_main_rule_and_a_pretrained_one(tmp_path):
  fam = QuadraticFamily()
  train = MetaTrainConfig(truncation=Truncation(horizon=4, unroll_length=2), batch_size=2,
                          num_meta_steps=2, validation=Validation(every=2, num_problems=2))
  _, paper_config, _ = metaopt.load_pretrained("quadratic")
  cfg = ExperimentConfig(
      name="g", family=fam, train_family=AugmentedFamily(fam), lstm=RNNPROP,
      rule_name="lstm_general", train=train, eval_steps=4,
      variants=(Variant("long", fam, 8, retune=True, reuse_tuned=False),),
      extra_rules=(ExtraRule("lstm", None, paper_config, train, pretrained="quadratic"),),
      baselines=("adam",), num_test_problems=3, num_tune_problems=2, lr_grid=(1e-3, 1e-2, 1e-1))
  summary = run_experiment(cfg, tmp_path, progress=False)
  opts = summary["variants"]["long"]["optimizers"]
  assert set(opts) == {"lstm_general", "lstm", "adam"}
  assert opts["lstm"]["hyperparameters"] == {"pretrained": "quadratic"}
  assert summary["extra_rules"]["lstm"]["pretrained"] == "quadratic"
  assert summary["lstm_config"]["preprocessing"] == "rnnprop"
  _, config, _ = metaopt.checkpoint.load_meta_params(tmp_path / "lstm_general.msgpack")
  assert config == RNNPROP and not (tmp_path / "lstm.msgpack").exists()
  wrong = ExtraRule("lstm", None, LSTMConfig((3,)), train, pretrained="quadratic")
  with pytest.raises(ValueError, match="pretrained rule 'quadratic' was made for"):
    run_experiment(ExperimentConfig(name="g", family=fam, lstm=RNNPROP, train=train,
                                    extra_rules=(wrong,), rule_name="lstm_general"),
                   tmp_path / "x", progress=False)


@pytest.mark.skipif("general" not in metaopt.list_pretrained(), reason="no shipped general rule")
def test_shipped_general_rule_loads_by_name_and_is_scale_free():
  phi, config, meta = metaopt.load_pretrained("general")
  assert config.preprocessing == "rnnprop" and config.output_activation == "tanh"
  opt = metaopt.learned_rule(phi, config)
  target = jnp.linspace(-1.0, 1.0, 16)

  def run(scale):
    loss = lambda p: scale * jnp.sum((p - target) ** 2)
    def step(carry, _):
      p, s = carry
      u, s = opt.update(jax.grad(loss)(p), s)
      return (optax.apply_updates(p, u), s), loss(p)
    return jax.lax.scan(step, (jnp.zeros(16), opt.init(jnp.zeros(16))), length=200)[1] / scale

  losses = jax.jit(run)(1.0)
  assert losses[-1] < 0.05 * losses[0]
  # Adam-normalized inputs: multiplying the loss by 1000 leaves the trajectory unchanged
  # (until gradients approach the eps = 1e-8 of the normalization, near convergence).
  np.testing.assert_allclose(jax.jit(run)(1000.0)[:50], losses[:50], rtol=1e-3)
