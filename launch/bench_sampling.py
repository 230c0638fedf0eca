r"""Sampling throughput: ttc_jax's sampling core vs transformers' generate.

  python launch/bench_sampling.py --out=runs/bench/sampling.json

Configs (a) d_model 128 / 2 layers and (b) d_model 256 / 4 layers (4 heads,
vocab 64), batches 64 and 256, prompt 32, 128 new greedy tokens. Writes a JSON
list of rows {config, batch, jax_tokens_per_s, hf_tokens_per_s, speedup,
jax_gflops_per_s, matmul_peak_gflops_per_s, same_tokens} and prints a table.

The JAX side runs over a 'data' mesh of one XLA CPU device per core (set here,
before JAX starts, unless XLA_FLAGS already gives a host device count); each
row also reports the same sampler on one device (jax_1dev_tokens_per_s).
"""

from ttc_jax import host

host.cpu_device_per_core()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from ttc_jax.benchmarks import sampling_bench

_OUT = flags.DEFINE_string("out", "runs/bench/sampling.json", "Output JSON path.")
_CONFIGS = flags.DEFINE_list("configs", ["a", "b"], "Model configs to run.")
_BATCHES = flags.DEFINE_list("batches", ["64", "256"], "Batch sizes.")
_RUNS = flags.DEFINE_integer("runs", 5, "Timed A/B runs per row (median reported, >= 5).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed warm-up runs per side.")
_PROMPT = flags.DEFINE_integer("prompt_len", 32, "Prompt length.")
_NEW = flags.DEFINE_integer("new_tokens", 128, "New tokens per row.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for weights and prompts.")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  rows = sampling_bench.run(
      _OUT.value, configs=_CONFIGS.value, batches=[int(b) for b in _BATCHES.value],
      prompt_len=_PROMPT.value, new_tokens=_NEW.value, runs=_RUNS.value,
      warmup=_WARMUP.value, seed=_SEED.value)
  print(sampling_bench.markdown_table(rows))
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
