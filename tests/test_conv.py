import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt.networks import GroupedLSTMConfig, LSTMConfig
from metaopt.problems import CONV_GROUPS, ConvFamily, classification_metrics, select_classes
from metaopt.unroll import init_unroll, unroll

from conftest import SHARED_DATA as SHARED


def _fake_cifar(n=96, seed=0, size=16):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          rng.integers(0, 10, n).astype(np.int32))


def _family(**kw):
  images, labels = _fake_cifar()
  kw = {"channels": (4, 4), "fc_size": 8, "batch_size": 16, **kw}
  return ConvFamily.from_arrays(images, labels, **kw)


def test_shapes_and_initial_loss_is_near_ln_classes():
  fam = ConvFamily.from_arrays(*_fake_cifar(size=32), batch_size=32)  # the paper's net
  params, state = fam.init(fam.sample_task(jax.random.key(0)), jax.random.key(1))
  assert jax.tree.map(jnp.shape, params)["conv_0"]["kernel"] == (5, 5, 3, 16)
  assert jax.tree.map(jnp.shape, params)["conv_2"]["kernel"] == (5, 5, 16, 16)
  assert params["fc"]["kernel"].shape == (4 * 4 * 16, 32)      # three 2x2 pools: 32 -> 4
  assert params["out"]["kernel"].shape == (32, 10)
  assert set(state) == {"conv_0", "conv_1", "conv_2", "fc"}
  losses = [float(jax.jit(fam.loss)(params, state, (), jax.random.key(k))[0]) for k in range(4)]
  assert np.mean(losses) == pytest.approx(np.log(10), abs=0.35)


def test_batch_norm_state_is_carried_through_the_unroll():
  fam = _family()
  task = fam.sample_task(jax.random.key(0))
  opt = optax.sgd(0.1)
  start = init_unroll(opt, fam, task, jax.random.key(1))
  end, _ = jax.jit(unroll, static_argnums=(0, 4))(opt, fam, task, start, 3)
  # The same three steps by hand: the state returned by each loss feeds the next.
  params, bn = start.params, start.model_state
  for t in range(3):
    key = jax.random.fold_in(start.key, t)
    (_, bn_next), g = jax.value_and_grad(fam.loss, has_aux=True)(params, bn, task, key)
    params = optax.apply_updates(params, opt.update(g, opt.init(params))[0])
    # Running averages move toward the batch statistics with momentum 0.9.
    assert not np.allclose(bn_next["conv_0"]["mean"], bn["conv_0"]["mean"])
    bn = bn_next
  np.testing.assert_allclose(end.model_state["fc"]["var"], bn["fc"]["var"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(end.params["out"]["kernel"], params["out"]["kernel"], rtol=1e-4,
                             atol=1e-6)


def test_batch_norm_statistics_get_no_gradient_and_eval_mode_uses_running_stats():
  fam = _family()
  params, state = fam.init((), jax.random.key(0))
  images = fam.images[:8]
  # Training mode normalizes with the batch: each conv output channel has ~zero mean.
  grads = jax.grad(lambda s: fam.loss(params, s, (), jax.random.key(1))[0])(state)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads))
  # Evaluation mode is a function of the running stats only (a batch of 1 works).
  a, _ = fam.logits(params, images[:1], state, train=False)
  b, _ = fam.logits(params, images, state, train=False)
  np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
  shifted = jax.tree.map(lambda x: x, state)
  shifted["fc"] = {"mean": state["fc"]["mean"] + 1.0, "var": state["fc"]["var"]}
  c, _ = fam.logits(params, images[:1], shifted, train=False)
  assert not np.allclose(a, c)
  m = classification_metrics(fam, (images, fam.labels[:8]), params, state)
  assert 0.0 <= float(m["test_accuracy"]) <= 1.0 and np.isfinite(float(m["test_loss"]))


def test_label_subsets_give_cifar2_and_relabel_in_order():
  images, labels = _fake_cifar(n=200)
  x, y = select_classes(images, labels, (7, 2))
  assert set(np.unique(y)) == {0, 1}
  np.testing.assert_array_equal(y == 0, labels[np.isin(labels, (7, 2))] == 7)
  fam = ConvFamily.from_arrays(images, labels, classes=(7, 2), channels=(4,), fc_size=8,
                               batch_size=8)
  assert fam.num_classes == 2 and fam.images.shape[0] == len(x)
  params, state = fam.init((), jax.random.key(0))
  assert params["out"]["kernel"].shape == (8, 2)
  loss, _ = fam.loss(params, state, (), jax.random.key(1))
  assert float(loss) == pytest.approx(np.log(2), abs=0.4)
  with pytest.raises(ValueError, match="no images"):
    select_classes(images, labels, (3, 11))
  with pytest.raises(ValueError, match="distinct"):
    select_classes(images, labels, (3, 3))


def test_two_lstm_groups_split_conv_and_fc_parameters():
  fam = _family()
  params, _ = fam.init((), jax.random.key(0))
  config = GroupedLSTMConfig((("conv", LSTMConfig()), ("fc", LSTMConfig())), CONV_GROUPS, "fc")
  labels = config.labels(params)
  assert set(jax.tree.leaves(labels["conv_0"]) + jax.tree.leaves(labels["conv_1"])) == {"conv"}
  assert set(jax.tree.leaves(labels["fc"]) + jax.tree.leaves(labels["out"])) == {"fc"}
  phi = metaopt.init_meta_params(config, jax.random.key(1))
  opt = metaopt.learned_rule(phi, config)
  state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(opt.update)(grads, state)
  assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_bad_configuration_is_rejected():
  images, labels = _fake_cifar()
  with pytest.raises(ValueError, match="uint8"):
    ConvFamily.from_arrays(images.astype(np.float32), labels)
  with pytest.raises(ValueError, match="labels"):
    ConvFamily.from_arrays(images, labels[:-1])
  with pytest.raises(ValueError, match="channels"):
    ConvFamily.from_arrays(images, labels, channels=())


def test_hand_written_convolution_gradient_matches_autodiff():
  from metaopt.problems.conv import conv2d_same
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (3, 8, 6, 2))
  w = jax.random.normal(k[1], (3, 5, 2, 4))
  ct = jax.random.normal(k[2], (3, 8, 6, 4))
  plain = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv2d_same(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.vjp(conv2d_same, x, w)[1](ct), jax.vjp(plain, x, w)[1](ct)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_runs_mapped_one_after_another_give_the_same_curves_as_vmapped_runs():
  from metaopt.unroll import loss_curves, sample_tasks
  fam = _family()
  assert fam.run_mode == "map"
  tasks, keys = sample_tasks(fam, jax.random.key(0), 2)
  # SGD, not Adam: Adam turns float-rounding noise in ~zero gradients into full-size steps.
  curves = lambda f: jax.jit(lambda t, k: loss_curves(optax.sgd(0.1), f, t, k, 3))(tasks, keys)
  mapped, vmapped = curves(fam), curves(fam.replace(run_mode="vmap"))
  assert mapped[0].shape == (2, 4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               mapped, vmapped)
  assert not np.allclose(mapped[0][0], mapped[0][1])   # two different runs, not one twice


def test_mapped_meta_loss_and_gradient_equal_the_vmapped_ones():
  # The family's run mode "map": meta-training unrolls the problems one after another.
  fam = _family(channels=(4,), batch_size=8)
  config = LSTMConfig(preprocessing="log_sign", output_scale=0.1)
  phi = metaopt.init_meta_params(config, jax.random.key(0))
  est = metaopt.TruncatedBackprop(config, unroll_length=2, batch_size=2)
  runs = jax.jit(est.start_runs)(phi, fam, jax.random.key(1))

  def meta_grad(estimator):
    loss_fn = lambda p: estimator.meta_loss(p, fam, runs)
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(phi)

  (map_loss, (mapped, map_curves)), map_grad = meta_grad(est)
  (vec_loss, (vec_runs, vec_curves)), vec_grad = meta_grad(
      dataclasses.replace(est, run_mode="vmap"))
  np.testing.assert_allclose(map_loss, vec_loss, rtol=1e-4)
  np.testing.assert_allclose(map_curves, vec_curves, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               mapped.states.model_state, vec_runs.states.model_state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6),
               map_grad, vec_grad)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(map_grad))


def test_make_cifar_rule_meta_trains_both_lstms_on_imitation_runs_of_the_conv_net():
  from experiments import cifar
  from metaopt.meta_step import prepare
  _, train = cifar.train_configs(quick=True)
  config = cifar.two_lstms(cifar.RNNPROP_LSTM)
  imitation = dataclasses.replace(train.objective.imitation, prob=1.0)
  cfg = dataclasses.replace(train, truncation=metaopt.Truncation(horizon=4, unroll_length=2),
                            objective=dataclasses.replace(train.objective, imitation=imitation))
  fam = _family(channels=(4,), batch_size=8)
  _, _, state, step = prepare(fam, config, cfg)
  assert bool(np.all(state.runs.settings.imitate))
  new, metrics = step(fam, state)
  assert bool(metrics["finite"]) and float(metrics["meta_loss"]) > 0
  for group in ("conv", "fc"):   # the imitation distance reaches each group's LSTM
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new.phi[group], state.phi[group])
    assert max(jax.tree.leaves(moved)) > 0, group
  # Batch-norm statistics move along the imitation run (the optimizee follows Adam).
  assert not np.allclose(jax.tree.leaves(new.runs.states.model_state)[0],
                         jax.tree.leaves(state.runs.states.model_state)[0])


@pytest.mark.skipif("cifar" not in metaopt.list_pretrained(), reason="no shipped CIFAR rule")
@pytest.mark.skipif(not (SHARED / "cifar10").is_dir(), reason="original CIFAR-10 files not found")
def test_shipped_cifar_rule_trains_the_papers_conv_net_in_a_users_optax_loop():
  phi, config, _ = metaopt.load_pretrained("cifar")
  assert isinstance(config, GroupedLSTMConfig) and set(phi) == {"conv", "fc"}
  ds = metaopt.data.load_dataset("cifar10", SHARED)
  fam = ConvFamily.from_arrays(ds.train_images[:4096], ds.train_labels[:4096], batch_size=64)
  params, bn = fam.init(fam.sample_task(jax.random.key(0)), jax.random.key(1))
  opt = optax.chain(metaopt.learned_rule(phi, config))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, bn, opt_state, key):
    (loss, bn), grads = jax.value_and_grad(fam.loss, has_aux=True)(params, bn, (), key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), bn, opt_state, loss

  losses = []
  for t in range(40):
    key = jax.random.fold_in(jax.random.key(7), t)
    params, bn, opt_state, loss = step(params, bn, opt_state, key)
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:3]), losses
