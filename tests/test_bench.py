"""The sampling benchmark's row and the host setup of the launch scripts (ttc_jax/host.py)."""

import json

import jax
import pytest

from ttc_jax import host
from ttc_jax.benchmarks import sampling_bench

TINY = sampling_bench.BenchConfig("tiny", d_model=32, num_layers=1, num_heads=2, mlp_dim=64)


@pytest.mark.e2e
def test_bench_row_times_both_sides_and_compares_tokens():
  assert jax.device_count() == 8  # conftest: the JAX side runs over an 8-device mesh.
  row = sampling_bench.bench_row(TINY, 8, prompt_len=8, new_tokens=8, runs=5, warmup=1,
                                 seed=0, peak=100.0)
  assert row["jax_devices"] == 8
  assert row["same_tokens"] and row["mismatches"] == []
  assert row["jax_1dev_same_tokens"]  # 1 device and 8 devices: identical greedy tokens
  for side in ("jax", "hf", "jax_1dev"):
    assert len(row[f"{side}_times_s"]) == 5 and min(row[f"{side}_times_s"]) > 0
  assert row["speedup"] == pytest.approx(row["jax_tokens_per_s"] / row["hf_tokens_per_s"])
  json.dumps(row)  # the row is written as JSON
  table = sampling_bench.markdown_table([row])
  assert "| tiny | 8 |" in table and table.count("\n") == 2


@pytest.mark.e2e
def test_the_varied_lengths_row_compares_continuous_static_shrinking_and_hf_on_the_same_tokens():
  row = sampling_bench.bench_varied_row(TINY, requests=128, slots=64, prompt_len=8,
                                        new_tokens=16, segment=4, runs=5, warmup=1, seed=0,
                                        peak=100.0, shrink=2)
  assert row["same_tokens"] and all(row["same_tokens_by_side"].values())
  assert row["useful_tokens"] == round(row["mean_length"] * 128)
  # Static batches pay for their longest row; continuous batching refills finished slots,
  # shrinking batches (on one device) drop them.
  assert row["utilization_static"] < row["utilization_continuous"] <= 1
  assert row["utilization_static"] < row["utilization_shrinking"] <= 1
  assert row["shrinking_devices"] == 1 and row["jax_devices"] == 8
  for side in ("jax_continuous", "jax_static", "jax_shrinking", "hf"):
    assert len(row[f"{side}_times_s"]) == 5 and row[f"{side}_useful_tokens_per_s"] > 0
  json.dumps(row)
  table = sampling_bench.markdown_table([row])
  assert "| tiny | 128 | 64 |" in table


def test_bench_refuses_fewer_than_five_runs(tmp_path):
  with pytest.raises(ValueError, match="at least 5 runs"):
    sampling_bench.run(str(tmp_path / "x.json"), configs=("a",), runs=3)


def test_cpu_device_per_core_respects_an_explicit_count():
  env = {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=3"}
  assert host.cpu_device_per_core(env) == 3
  assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=3"


def test_cpu_device_per_core_refuses_after_backend_start(monkeypatch):
  monkeypatch.setattr(host.os, "cpu_count", lambda: 2)
  jax.devices()  # backends are up in this process
  with pytest.raises(RuntimeError, match="after JAX initialised"):
    host.cpu_device_per_core({"XLA_FLAGS": "--xla_cpu_foo=1"})


def test_cpu_device_per_core_in_a_fresh_process():
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  code = ("from ttc_jax import host; n = host.cpu_device_per_core(); import jax; "
          "print(n, jax.device_count(), flush=True)")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  n = host.default_cpu_devices()
  assert out == [str(n), str(n)]
  assert n & (n - 1) == 0 and 1 <= n <= min(8, os.cpu_count())


def test_free_compiled_code_unmaps_and_programs_still_run():
  f = jax.jit(lambda x: x * 2 + 1)
  assert int(f(3)) == 7
  for i in range(20):  # some programs of its own, whatever ran before in this process
    assert float(jax.jit(lambda x, i=i: jax.numpy.sin(x) * i)(0.0)) == 0.0
  before = host.map_count_fraction()
  assert before is not None and 0 < before < 1  # Linux: /proc tells
  assert not host.free_compiled_code(threshold=1.0)  # below the limit: nothing dropped
  assert host.free_compiled_code(threshold=0.0)
  assert host.map_count_fraction() < before  # compiled code was unmapped
  assert int(f(4)) == 9  # recompiled on demand
