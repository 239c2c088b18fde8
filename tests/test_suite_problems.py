"""The task suite (metaopt.problems.suite) and its new families."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt.data import Dataset, downsample
from metaopt.problems import charlm, suite
from metaopt.problems.quadratic import QuadraticFamily
from metaopt.problems.rosenbrock import RosenbrockFamily
from metaopt.unroll import jitted_loss_curves

from conftest import SHARED_DATA as SHARED


def _fake_dataset(side, channels, n=512, seed=0):
  """Images = a coarse (4 x 4 blocks) template per class + noise, so labels are learnable."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int32)
  blocks = rng.integers(0, 256, (10, 4, 4, channels))
  templates = blocks.repeat(side // 4, axis=1).repeat(side // 4, axis=2)
  images = np.clip(templates[labels] + rng.integers(-40, 41, (n, side, side, channels)), 0, 255)
  images = images.astype(np.uint8)
  return Dataset(images, labels, images[:64], labels[:64], 10)


FAKE = {"mnist": _fake_dataset(28, 1), "fashion_mnist": _fake_dataset(28, 1, seed=1),
        "cifar10": _fake_dataset(32, 3, n=256, seed=2)}


@pytest.fixture(scope="module")
def quick_suite():
  return suite.make_suite(seed=0, quick=True, datasets=FAKE)


def test_quadratic_defaults_are_bit_identical_to_the_papers_formula():
  fam, key = QuadraticFamily(dim=7), jax.random.key(3)
  task = jax.jit(fam.sample_task)(key)
  k_w, k_y = jax.random.split(key)
  np.testing.assert_array_equal(task.w, jax.random.normal(k_w, (7, 7)))
  np.testing.assert_array_equal(task.y, jax.random.normal(k_y, (7,)))
  params, state = fam.init(task, jax.random.key(4))
  np.testing.assert_array_equal(params, 0.01 * jax.random.normal(jax.random.key(4), (7,)))
  loss, _ = fam.loss(params, state, task, None)
  np.testing.assert_array_equal(loss, jnp.sum((task.w @ params - task.y) ** 2))
  assert state == ()


def test_quadratic_conditioning_and_distance():
  fam = QuadraticFamily(dim=6, condition_number=100.0, distance=3.0)
  tasks = jax.vmap(fam.sample_task)(jax.random.split(jax.random.key(0), 4))
  for w, y in zip(np.asarray(tasks.w, np.float64), np.asarray(tasks.y, np.float64)):
    assert np.linalg.cond(2 * w.T @ w) == pytest.approx(100.0, rel=1e-3)
    assert np.linalg.norm(np.linalg.solve(w, y)) == pytest.approx(3.0, rel=1e-3)
  with pytest.raises(ValueError, match="condition_number"):
    QuadraticFamily(condition_number=0.5)


def test_downsample_averages_areas():
  img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10
  np.testing.assert_array_equal(downsample(img, 2)[0, ..., 0], [[25, 45], [105, 125]])
  # 3 -> 2: each output pixel covers 1.5 x 1.5 inputs (weights 1 and 0.5 per axis, / 1.5).
  img = np.zeros((1, 3, 3, 1), np.uint8)
  img[0, 0, 0, 0] = 90
  np.testing.assert_array_equal(downsample(img, 2)[0, ..., 0], [[40, 0], [0, 0]])
  flat = np.full((3, 28, 28, 3), 77, np.uint8)
  np.testing.assert_array_equal(downsample(flat, 8), np.full((3, 8, 8, 3), 77, np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    downsample(flat.astype(np.float32), 8)


def test_char_lm_reads_the_standard_library_with_a_fixed_vocabulary():
  assert charlm.VOCAB_SIZE == 97 and charlm.VOCAB[0] == "\n" and charlm.VOCAB[-1] == "~"
  text = charlm.stdlib_text(50_000)
  assert len(text) == 50_000 and text == charlm.stdlib_text(50_000)
  assert b"import " in text and b"def " in text
  tokens = charlm.encode(text)
  assert tokens.dtype == np.uint8 and tokens.max() < charlm.VOCAB_SIZE
  assert np.mean(tokens == 0) < 0.01        # nearly all of it is printable ASCII
  assert charlm.decode(charlm.encode(b"def f(x):\n\treturn x")) == "def f(x):\n?return x"


def test_sizes_are_drawn_deterministically_from_the_seed():
  for quick in (True, False):
    assert suite.suite_specs(0, quick) == suite.suite_specs(0, quick)
    assert suite.suite_specs(0, quick) != suite.suite_specs(1, quick)
  names = [s.name for s in suite.suite_specs(0)]
  assert len(set(names)) == len(names)


@pytest.mark.parametrize("quick", [True, False])
def test_the_split_holds_out_whole_types_and_data_sets(quick):
  specs = suite.suite_specs(5, quick)
  by_split = {sp: [s for s in specs if s.split == sp] for sp in suite.SPLITS}
  assert all(by_split.values())
  train_types = {s.task_type for s in by_split[suite.META_TRAIN]}
  held_types = {s.task_type for s in by_split[suite.HELD_OUT_TYPE]}
  assert train_types == set(suite.TRAIN_TYPES) and held_types == set(suite.HELD_OUT_TYPES)
  assert not train_types & held_types
  assert {s.task_type for s in by_split[suite.HELD_OUT_DATA]} <= train_types
  assert not {s.dataset for s in by_split[suite.META_TRAIN]} & set(suite.HELD_OUT_DATASETS)
  convs = [s for s in specs if s.task_type == "conv"]
  assert {s.options["batch_norm"] for s in convs} == {True, False}


def test_full_suite_sizes_stay_small():
  full = suite.make_suite(seed=0, datasets=FAKE, max_images=32)
  counts = {t.name: t.num_params for t in full}
  assert len(full.split(suite.META_TRAIN)) >= 10 and len(full) >= 20
  assert max(counts.values()) <= 25_000, counts
  mlps = [t.family for t in full if t.task_type == "mlp"]
  assert all(1 <= len(f.hidden_sizes) <= 3 and min(f.hidden_sizes) >= 8 for f in mlps)
  assert {f.images.shape[1] for f in mlps} == {8, 28, 32}


def test_every_task_starts_finite_and_adam_decreases_it(quick_suite):
  for t in quick_suite.split(suite.META_TRAIN, suite.HELD_OUT_TYPE):   # every type and variant
    fam = t.family
    tasks = jax.vmap(fam.sample_task)(jax.random.split(jax.random.key(1), 2))
    keys = jax.random.split(jax.random.key(2), 2)
    curves, _ = jitted_loss_curves(optax.adam, fam, tasks, keys, 20, (0.03,))
    curves = np.asarray(curves)
    assert np.all(np.isfinite(curves)), t.name
    assert curves[:, -5:].mean() < 0.9 * curves[:, 0].mean(), (t.name, curves[:, [0, -1]])


def test_augmented_training_families_start_where_the_plain_ones_do(quick_suite):
  @jax.jit
  def start_losses(aug):
    task = aug.sample_task(jax.random.key(0))
    params, state = aug.init(task, jax.random.key(1))
    base_params, base_state = aug.base.init(task.task, jax.random.key(1))
    return (aug.loss(params, state, task, jax.random.key(2))[0],
            aug.base.loss(base_params, base_state, task.task, jax.random.key(2))[0])

  for t in quick_suite.split(suite.META_TRAIN):
    if t.task_type not in ("mlp", "rosenbrock"):   # one net and one task with task data
      continue
    loss, base = start_losses(t.training_family(max_log_scale=1.0))
    assert float(loss) == pytest.approx(float(base), rel=1e-4), t.name
  first = quick_suite.split(suite.META_TRAIN)[0]
  assert first.training_family(0.0) is first.family


def test_losses_vmap_over_tasks():
  for fam in (RosenbrockFamily(dim=4), QuadraticFamily(dim=5, condition_number=10.0)):
    keys = jax.random.split(jax.random.key(0), 3)
    tasks = jax.vmap(fam.sample_task)(keys)
    params = jax.vmap(lambda tk, k: fam.init(tk, k)[0])(tasks, keys)
    batched = jax.jit(jax.vmap(lambda p, tk: fam.loss(p, (), tk, None)[0]))(params, tasks)
    for i in range(3):
      p_i, task_i = jax.tree.map(lambda x, i=i: x[i], (params, tasks))
      assert float(batched[i]) == pytest.approx(float(fam.loss(p_i, (), task_i, None)[0]),
                                                rel=1e-5)


def test_rosenbrock_minimum_and_normalized_log_loss():
  fam = RosenbrockFamily(dim=3)
  task = fam.sample_task(jax.random.key(0))
  assert float(fam.loss(jnp.ones(3), (), task, None)[0]) == 0.0
  curves = jnp.array([[2.0, 1.0, 0.5, 0.0], [200.0, 100.0, 50.0, 0.0]])
  expected = [0.0, -np.log(2), -np.log(4), np.log(1e-8)]
  np.testing.assert_allclose(suite.normalized_log_loss(curves), [expected, expected], rtol=1e-5)


@pytest.mark.skipif(not (SHARED / "mnist").is_dir() or not (SHARED / "fashion_mnist").is_dir(),
                    reason="original MNIST / Fashion-MNIST files not found")
def test_quick_suite_on_the_real_data_shares_its_device_images():
  s = suite.make_suite(SHARED, seed=0, quick=True)
  mnist = [t.family for t in s if t.dataset == "mnist"]
  assert all(f.images is mnist[0].images for f in mnist)
  assert mnist[0].images.shape == (2048, 8, 8, 1) and mnist[0].images.dtype == jnp.uint8
  fam = s[[t.name for t in s if t.task_type == "charlm"][0]].family
  np.testing.assert_array_equal(fam.tokens[:200], charlm.encode(charlm.stdlib_text(200)))
