"""`make bench`'s measurements on tiny shapes: FLOP counts, row fields and ratios."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench
from metaopt.networks import CoordinatewiseLSTM, LSTMConfig, init_meta_params
from metaopt.problems import QuadraticFamily


@pytest.mark.parametrize("preprocessing", ["none", "log_sign"])
def test_analytic_lstm_flops_agree_with_xla_cost_analysis_without_and_with_a_loop(preprocessing):
  # The bench scales XLA's count of a scan by the trip count (XLA counts a loop body once)
  # and checks it against the analytic count: both must hold on a loop-free step.
  config, n, steps = LSTMConfig(preprocessing=preprocessing), 4096, 3
  phi = init_meta_params(config, jax.random.key(0))
  state = tuple(jnp.zeros((h, n)) for h in config.hidden_sizes)
  net = CoordinatewiseLSTM(config)
  one_step = lambda g, h, c: net.apply(phi, g, h, c)

  def looped(g, h, c):
    return jax.lax.scan(lambda hc, _: (one_step(g, *hc)[1:], None), (h, c), length=steps)[0]

  def unrolled(g, h, c):
    for _ in range(steps):
      _, h, c = one_step(g, h, c)
    return h, c

  flops = lambda fn: bench._flops(jax.jit(fn).lower(jnp.ones(n), state, state).compile())
  analytic = bench.lstm_flops_per_coordinate_step(config) * n
  assert 1.0 <= flops(one_step) / analytic < 1.25  # XLA also counts the gates' elementwise ops
  np.testing.assert_allclose(flops(looped) * steps, flops(unrolled), rtol=0.05)


def test_bench_rows_have_the_documented_fields_and_consistent_ratios():
  m = bench.bench_meta_step("quadratic", QuadraticFamily(dim=4), LSTMConfig(), 4, 3, 2, 128)
  assert m["coordinates"] == 4 and m["seconds"] > 0 and m["compile_seconds"] > 0
  assert m["flops"] == max(m["flops_cost_analysis_x_trips"], m["flops_analytic_lstm_fwd_bwd"])
  np.testing.assert_allclose(m["coord_steps_per_second"], 4 * 4 * 3 / m["seconds"])
  np.testing.assert_allclose(m["fraction_of_matmul"],
                             m["flops"] / m["seconds"] / m["matmul_flop_rate"])
  r = bench.bench_rule_step(1000, 2, 128)
  for key in ("seconds", "adam_seconds", "seconds_without_donation", "matmul_flop_rate"):
    assert r[key] > 0, key
  np.testing.assert_allclose(r["ns_per_param"], r["seconds"] / 1000 * 1e9)
  np.testing.assert_allclose(r["fraction_of_matmul"],
                             r["flops"] / r["seconds"] / r["matmul_flop_rate"])
  mlp = bench.bench_rule_step(1000, 2, 128, rule="mlp")
  assert mlp["rule"] == "mlp" and r["rule"] == "lstm"
  np.testing.assert_allclose(mlp["adam_ratio"], mlp["seconds"] / mlp["adam_seconds"])


def test_memory_rows_come_in_pairs_without_and_with_remat():
  rows = bench.bench_memory("quadratic", QuadraticFamily(dim=4), LSTMConfig(), 4, reps=1)
  assert [(r["unroll"], r["remat"]) for r in rows] == [(4, False), (4, True)]
  assert all(r["bytes"] >= r["temp_bytes"] > 0 and r["seconds"] > 0 for r in rows)


def test_quick_bench_writes_the_documented_layout(tmp_path, monkeypatch):
  def no_data(name):
    raise FileNotFoundError(f"no {name} here")
  monkeypatch.setattr(bench.metaopt.data, "load_dataset", no_data)  # quadratic rows only
  out = tmp_path / "bench.json"
  result = bench.main(["--quick", "--out", str(out), "--max-params", "1000"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  assert {"device", "jax_version", "commit", "matmul_flop_rate", "meta_step", "rule_step",
          "memory"} <= set(result)
  assert set(result["meta_step"]) == {"quadratic"}
  assert [(r["num_params"], r["rule"]) for r in result["rule_step"]] == [
      (1000, rule) for rule in ("lstm", "mlp")]
  assert [(r["unroll"], r["remat"]) for r in result["memory"]] == [
      (10, False), (10, True), (20, False), (20, True)]


def test_bench_malloc_times_the_makefiles_tunables_and_the_system_malloc():
  import pathlib
  import re

  from experiments import bench_malloc
  makefile = (pathlib.Path(__file__).parents[1] / "Makefile").read_text()
  assert re.search(r"^MALLOC_TUNABLES \?= (\S+)$", makefile, re.M).group(1) == bench_malloc.TUNABLES
  s = bench_malloc.settings()
  assert s["system"]["GLIBC_TUNABLES"] == "" and s["system"]["LD_PRELOAD"] == ""
  assert s["tunables"]["GLIBC_TUNABLES"] == bench_malloc.TUNABLES
  assert all(t in ("system", "tunables", "tcmalloc") for t in s)


def test_profile_groups_top_level_ops_by_what_their_fusions_compute():
  from experiments.profile_meta_step import op_categories

  def f(w, x):
    def body(h, _):
      g = w @ h
      return jnp.tanh(g) * 2 + 1, g
    return jax.lax.scan(body, x, length=3)

  hlo = jax.jit(f).lower(jnp.ones((64, 64)), jnp.ones((64, 128))).compile().as_text()
  categories = op_categories(hlo)
  kinds = set(categories.values())
  assert {"matrix products", "gate nonlinearities (tanh, logistic)",
          "scan residuals (dynamic slices)"} <= kinds
  # Ops inside a fusion are timed as the fusion; loops are timed by their bodies' ops.
  assert not any(name.startswith(("tanh", "while")) for name in categories)
