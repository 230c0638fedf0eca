"""Sampling throughput: the JAX sampling core against transformers' ``generate``.

Both frameworks get the same weights (copied with :func:`to_hf_llama`), the same
prompts and greedy decoding with ``min_new_tokens == max_new_tokens``, so both
produce exactly ``batch * max_new_tokens`` tokens and the tokens can be compared.
Runs alternate A/B after a warm-up; each row reports medians.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from ttc_jax.models import Transformer
from ttc_jax.models import TransformerConfig
from ttc_jax.models.hf_convert import to_hf_llama
from ttc_jax.sampling import SamplingCore
from ttc_jax.sampling import SamplingParams
from ttc_jax.sampling import SpecialIds
from ttc_jax.sampling import make_mesh
from ttc_jax.sampling import row_keys
from ttc_jax.sampling.core import SHRINK_ROWS

PAD_ID, EOS_ID = 0, 2


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  name: str
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  vocab_size: int = 64


CONFIGS = {
    "a": BenchConfig("a", d_model=128, num_layers=2, num_heads=4, mlp_dim=512),
    "b": BenchConfig("b", d_model=256, num_layers=4, num_heads=4, mlp_dim=1024),
}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  """fp32 (n x n) @ (n x n) throughput of this machine under jax, median of repeats."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / statistics.median(times) / 1e9


def model_flops(cfg: TransformerConfig, batch: int, prompt: int, new: int) -> float:
  """Forward FLOPs of prefill + decode: 2 x matmul params per token, plus attention
  (QK^T and PV, 4 x layers x heads x head_dim per attended position)."""
  n_mm = cfg.num_params(include_embeddings=False) + cfg.d_model * cfg.vocab_size
  attn = 4 * cfg.num_layers * cfg.num_heads * cfg.dim_per_head
  total = 0.0
  for pos in range(prompt + new):
    total += 2 * n_mm + attn * (pos + 1)
  return batch * total



def first_divergences(model: Transformer, prompts: np.ndarray, a: np.ndarray, b: np.ndarray,
                      limit: int = 10) -> list[dict]:
  """Where greedy tokens of two implementations first differ, with the top-2 logit
  margin of ``model`` there (a margin near fp32 rounding means a near-tie)."""
  out = []
  for r in np.where((a != b).any(axis=1))[0][:limit]:
    t = int(np.argmax(a[r] != b[r]))
    seq = np.concatenate([prompts[r], a[r, :t]])[None]
    logits, _ = model(jnp.asarray(seq))
    top2 = np.sort(np.asarray(logits[0, -1]))[-2:]
    out.append({"row": int(r), "step": t, "jax_token": int(a[r, t]), "hf_token": int(b[r, t]),
                "top2_margin": float(top2[1] - top2[0])})
  return out


def _bench_model(bc: BenchConfig, max_seq_len: int, seed: int) -> Transformer:
  """The benchmarked model of ``bc``: random weights, init_std 0.05.

  same_tokens compares the greedy tokens of two fp32 implementations: they agree
  unless a top-2 logit gap falls below their rounding difference (measured: about
  4e-6 of the logits' spread, from the matmuls' summation order). With random
  weights such near-ties come about once per 1e5 greedy tokens, and a bench run
  makes 8e4: over init_std 0.02/0.05/0.1 x seeds 0-2, 2 of the 9 runs had one
  diverging row (none at 0.05). A divergence is reported with its logit margin in
  ``mismatches``.
  """
  cfg = TransformerConfig(
      vocab_size=bc.vocab_size, d_model=bc.d_model, num_layers=bc.num_layers,
      num_heads=bc.num_heads, mlp_dim=bc.mlp_dim, max_seq_len=max_seq_len, init_std=0.05)
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def _sides(model: Transformer, mesh, prompts: np.ndarray, *, new_tokens: int, seed: int
           ) -> dict[str, Callable[[], np.ndarray]]:
  """The timed implementations, each returning its greedy new tokens: 'jax' (the sampling
  core over ``mesh``), 'hf' (transformers' ``generate`` on the same weights) and, with
  more than one device in ``mesh``, 'jax_1dev' (the core on one device)."""
  import torch  # pylint: disable=g-import-not-at-top

  hf = to_hf_llama(model, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
  ids = SpecialIds(pad_id=PAD_ID, eos_ids=(EOS_ID,))
  core = SamplingCore(model, ids, mesh=mesh)
  sp = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
  keys = row_keys(seed, np.arange(prompts.shape[0]))
  input_ids = torch.from_numpy(prompts.astype(np.int64))
  attention_mask = torch.ones_like(input_ids)

  def jax_runner(c):
    return lambda: np.asarray(c.generate(prompts, None, keys, sp).tokens)

  def run_hf():
    with torch.inference_mode():
      out = hf.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                        eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return out[:, prompts.shape[1]:].numpy()

  sides = {"jax": jax_runner(core), "hf": run_hf}
  if mesh.size > 1:
    sides["jax_1dev"] = jax_runner(
        SamplingCore(model, ids, mesh=make_mesh(devices=jax.devices()[:1])))
  return sides


def _time_sides(sides: dict[str, Callable[[], np.ndarray]], *, runs: int, warmup: int,
                label: str) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
  """(each side's tokens of its last run, each side's run times in seconds): ``warmup``
  untimed rounds, then ``runs`` timed rounds of every side, the starting side rotating."""
  names = list(sides)
  tokens = {}
  for _ in range(warmup):
    for name in names:
      tokens[name] = sides[name]()
  times = {name: [] for name in names}
  for i in range(runs):
    # Interleaved runs; the starting side rotates.
    for name in names[i % len(names):] + names[:i % len(names)]:
      t = time.perf_counter()
      tokens[name] = sides[name]()
      times[name].append(time.perf_counter() - t)
    logging.info("%s run %d/%d: %s", label, i + 1, runs,
                 ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names))
  return tokens, times


def bench_row(bc: BenchConfig, batch: int, *, prompt_len: int, new_tokens: int,
              runs: int, warmup: int, seed: int, peak: float) -> dict:
  """One (config, batch) row: JAX and transformers alternating, medians.

  The JAX side samples over a 'data' mesh of every local device (on the CPU
  backend, one device per core: see :func:`ttc_jax.host.cpu_device_per_core`);
  with more than one device the same core on a single device is timed too
  (``jax_1dev_tokens_per_s``) and must give the same tokens.
  """
  model = _bench_model(bc, prompt_len + new_tokens, seed)
  mesh = make_mesh()
  if batch % mesh.shape["data"]:
    raise ValueError(f"batch {batch} does not divide the {mesh.shape['data']} devices.")
  rng = np.random.default_rng(seed)
  prompts = rng.integers(EOS_ID + 1, bc.vocab_size, (batch, prompt_len), dtype=np.int32)
  sides = _sides(model, mesh, prompts, new_tokens=new_tokens, seed=seed)
  tokens, times = _time_sides(sides, runs=runs, warmup=warmup,
                              label=f"config {bc.name} batch {batch}")
  n_tok = batch * new_tokens
  med = {name: statistics.median(t) for name, t in times.items()}
  jax_tokens, hf_tokens = tokens["jax"], tokens["hf"]
  same = bool(jax_tokens.shape == hf_tokens.shape and np.array_equal(jax_tokens, hf_tokens))
  mismatches = [] if same else first_divergences(model, prompts, jax_tokens, hf_tokens)
  row = {
      "config": bc.name,
      "model": dataclasses.asdict(bc),
      "batch": batch,
      "prompt_len": prompt_len,
      "new_tokens": new_tokens,
      "jax_tokens_per_s": n_tok / med["jax"],
      "hf_tokens_per_s": n_tok / med["hf"],
      "speedup": med["hf"] / med["jax"],
      "jax_gflops_per_s": (model_flops(model.config, batch, prompt_len, new_tokens)
                           / med["jax"] / 1e9),
      "matmul_peak_gflops_per_s": peak,
      "same_tokens": same,
      "mismatches": mismatches,
      "jax_devices": mesh.size,
      "jax_times_s": times["jax"],
      "hf_times_s": times["hf"],
  }
  if "jax_1dev" in sides:
    row["jax_1dev_tokens_per_s"] = n_tok / med["jax_1dev"]
    row["jax_1dev_speedup"] = med["hf"] / med["jax_1dev"]
    row["jax_1dev_same_tokens"] = bool(np.array_equal(tokens["jax_1dev"], jax_tokens))
    row["jax_1dev_times_s"] = times["jax_1dev"]
  return row


def bench_varied_row(bc: BenchConfig, *, requests: int, slots: int, prompt_len: int,
                     new_tokens: int, segment: int, runs: int, warmup: int, seed: int,
                     peak: float, shrink: int = SHRINK_ROWS) -> dict:
  """Many samples of different lengths: ``requests`` greedy answers, request i capped at
  ``limits[i]`` tokens (uniform in [new_tokens / 16, new_tokens]). Timed: the sampling
  core with continuous batching (``slots`` rows refilled every ``segment`` steps), the core
  on static batches of ``slots`` rows (each call runs to its longest cap), the same batches
  shrinking as their rows end (``shrink``: the fewest rows, as the stages sample; on one
  XLA device, as the stages do: over several a call does not shrink), and
  transformers' ``generate`` on the same static batches (it has no per-row cap: each batch
  runs to its longest cap and rows are cut after). Useful tokens/s = sum(limits) / time for
  all four; same_tokens compares every row's first ``limits[i]`` tokens."""
  import torch  # pylint: disable=g-import-not-at-top
  from ttc_jax.sampling import serving  # pylint: disable=g-import-not-at-top

  model = _bench_model(bc, prompt_len + new_tokens, seed)
  rng = np.random.default_rng(seed)
  prompts = rng.integers(EOS_ID + 1, bc.vocab_size, (requests, prompt_len), dtype=np.int32)
  limits = rng.integers(max(1, new_tokens // 16), new_tokens + 1, requests).astype(np.int32)
  hf = to_hf_llama(model, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
  ids = SpecialIds(pad_id=PAD_ID, eos_ids=(EOS_ID,))
  core = SamplingCore(model, ids, mesh=make_mesh())
  core1 = SamplingCore(model, ids)  # one device (the process's default mesh)
  sp = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
  keys = row_keys(seed, np.arange(requests))
  batches = [np.arange(s, min(s + slots, requests)) for s in range(0, requests, slots)]
  steps = {"static": 0, "continuous": 0, "shrinking": 0}

  def cut(tokens):
    return np.where(np.arange(new_tokens)[None] < limits[:, None], tokens, PAD_ID)

  def run_continuous():
    served = serving.serve(core, list(prompts), keys, sp, slots=slots, segment=segment,
                           limits=limits)
    steps["continuous"] = served.row_steps
    return cut(served.tokens)

  def run_static():
    out, paid = np.full((requests, new_tokens), PAD_ID, np.int32), 0
    for sel in batches:
      o = core.generate(prompts[sel], None, keys[sel], sp, limits=limits[sel])
      out[sel] = np.asarray(o.tokens)
      paid += int(o.row_steps)
    steps["static"] = paid
    return cut(out)

  def run_shrinking():
    out, paid = np.full((requests, new_tokens), PAD_ID, np.int32), 0
    for sel in batches:
      o = core1.generate(prompts[sel], None, keys[sel], sp, limits=limits[sel], shrink=shrink)
      out[sel] = np.asarray(o.tokens)
      paid += int(o.row_steps)
    steps["shrinking"] = paid
    return cut(out)

  def run_hf():
    out = np.full((requests, new_tokens), PAD_ID, np.int32)
    for sel in batches:
      n = int(limits[sel].max())
      with torch.inference_mode():
        got = hf.generate(torch.from_numpy(prompts[sel].astype(np.int64)),
                          attention_mask=torch.ones((len(sel), prompt_len), dtype=torch.int64),
                          do_sample=False, max_new_tokens=n, min_new_tokens=n, use_cache=True,
                          eos_token_id=EOS_ID, pad_token_id=PAD_ID)
      out[sel, :n] = got[:, prompt_len:].numpy()
    return cut(out)

  sides = {"jax_continuous": run_continuous, "jax_static": run_static,
           "jax_shrinking": run_shrinking, "hf": run_hf}
  tokens, times = _time_sides(sides, runs=runs, warmup=warmup,
                              label=f"config {bc.name} varied lengths")
  useful = int(limits.sum())
  med = {name: statistics.median(t) for name, t in times.items()}
  same = {name: bool(np.array_equal(tokens[name], tokens["hf"])) for name in sides}
  row = {
      "config": bc.name, "model": dataclasses.asdict(bc), "kind": "varied_lengths",
      "requests": requests, "batch": slots, "segment": segment, "prompt_len": prompt_len,
      "new_tokens": new_tokens, "useful_tokens": useful,
      "mean_length": float(limits.mean()),
      **{f"{name}_useful_tokens_per_s": useful / med[name] for name in sides},
      "speedup": med["hf"] / med["jax_continuous"],
      "static_speedup": med["hf"] / med["jax_static"],
      "shrinking_speedup": med["hf"] / med["jax_shrinking"],
      "continuous_over_static": med["jax_static"] / med["jax_continuous"],
      "utilization_continuous": useful / steps["continuous"],
      "utilization_static": useful / steps["static"],
      "utilization_shrinking": useful / steps["shrinking"], "shrink": shrink,
      "shrinking_devices": core1.mesh.size,
      "matmul_peak_gflops_per_s": peak,
      "jax_gflops_per_s": (model_flops(model.config, 1, prompt_len, 0) * requests
                           + sum(model_flops(model.config, 1, prompt_len, int(n))
                                 - model_flops(model.config, 1, prompt_len, 0) for n in limits)
                           ) / med["jax_continuous"] / 1e9,
      "same_tokens": same["jax_continuous"] and same["jax_static"] and same["jax_shrinking"],
      "same_tokens_by_side": same, "jax_devices": core.mesh.size,
      **{f"{name}_times_s": times[name] for name in sides},
  }
  return row


def run(out_path: str, *, configs: Sequence[str] = ("a", "b"), batches: Sequence[int] = (64, 256),
        prompt_len: int = 32, new_tokens: int = 128, runs: int = 5, warmup: int = 1,
        seed: int = 0, varied_requests: int = 1024, segment: int = 8) -> list[dict]:
  """Runs every (config, batch) row, then per config a row of ``varied_requests`` samples
  of different lengths on ``max(batches)`` slots (0: none), and writes the JSON list to
  ``out_path``."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  if runs < 5:
    raise ValueError(f"runs={runs}: the benchmark reports medians of at least 5 runs.")
  for c in configs:
    if c not in CONFIGS:
      raise ValueError(f"unknown config {c!r}; known: {sorted(CONFIGS)}.")
  peak = matmul_peak_gflops()
  logging.info("fp32 matmul peak (jax, 2048^3): %.1f GFLOP/s", peak)
  env = {"jax": jax.__version__, "torch": torch.__version__,
         "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
         "cpu_count": os.cpu_count(), "machine": platform.machine(),
         "jax_devices": [str(d) for d in jax.devices()],
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
  rows = []
  for c in configs:
    for b in batches:
      row = bench_row(CONFIGS[c], b, prompt_len=prompt_len, new_tokens=new_tokens, runs=runs,
                      warmup=warmup, seed=seed, peak=peak)
      row["env"] = env
      rows.append(row)
      logging.info(
          "config %s batch %d: jax %.0f tok/s, hf %.0f tok/s, speedup %.2fx, %.1f GFLOP/s "
          "(%.0f%% of peak), same_tokens=%s", c, b, row["jax_tokens_per_s"],
          row["hf_tokens_per_s"], row["speedup"], row["jax_gflops_per_s"],
          100 * row["jax_gflops_per_s"] / peak, row["same_tokens"])
    if varied_requests:
      row = bench_varied_row(CONFIGS[c], requests=varied_requests, slots=max(batches),
                             prompt_len=prompt_len, new_tokens=new_tokens, segment=segment,
                             runs=runs, warmup=warmup, seed=seed, peak=peak)
      row["env"] = env
      rows.append(row)
      logging.info(
          "config %s, %d samples of different lengths: useful tok/s jax continuous %.0f, "
          "jax static %.0f, jax shrinking %.0f, hf %.0f (speedup %.2fx / %.2fx / %.2fx); "
          "utilization %.2f / %.2f / %.2f; same_tokens=%s", c, varied_requests,
          row["jax_continuous_useful_tokens_per_s"], row["jax_static_useful_tokens_per_s"],
          row["jax_shrinking_useful_tokens_per_s"], row["hf_useful_tokens_per_s"],
          row["speedup"], row["static_speedup"], row["shrinking_speedup"],
          row["utilization_continuous"], row["utilization_static"],
          row["utilization_shrinking"], row["same_tokens"])
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with open(out_path, "w") as f:
    json.dump(rows, f, indent=2)
  return rows


def markdown_table(rows: Sequence[dict]) -> str:
  lines = ["| config | batch | jax tok/s | hf tok/s | speedup | jax GFLOP/s | % of matmul peak "
           "| same tokens | jax 1-device tok/s (speedup) |",
           "|---|---|---|---|---|---|---|---|---|"]
  varied = [r for r in rows if r.get("kind") == "varied_lengths"]
  rows = [r for r in rows if r.get("kind") != "varied_lengths"]
  for r in rows:
    lines.append(
        f"| {r['config']} | {r['batch']} | {r['jax_tokens_per_s']:.0f} | {r['hf_tokens_per_s']:.0f} "
        f"| {r['speedup']:.2f} | {r['jax_gflops_per_s']:.1f} | "
        f"{100 * r['jax_gflops_per_s'] / r['matmul_peak_gflops_per_s']:.0f}% | {r['same_tokens']} | "
        + (f"{r['jax_1dev_tokens_per_s']:.0f} ({r['jax_1dev_speedup']:.2f}) |"
           if "jax_1dev_tokens_per_s" in r else "- |"))
  if varied:
    lines += ["", "Samples of different lengths (useful tokens/s: the tokens each row asked for "
              "over the time; static batches run to their longest row):", "",
              "| config | samples | slots | mean length | jax continuous | jax static | "
              "jax shrinking (1 device) | hf | speedup (continuous / static / shrinking vs hf) | "
              "utilization continuous / static / shrinking | same tokens |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in varied:
      lines.append(
          f"| {r['config']} | {r['requests']} | {r['batch']} | {r['mean_length']:.0f} | "
          f"{r['jax_continuous_useful_tokens_per_s']:.0f} | "
          f"{r['jax_static_useful_tokens_per_s']:.0f} | "
          f"{r['jax_shrinking_useful_tokens_per_s']:.0f} | {r['hf_useful_tokens_per_s']:.0f} | "
          f"{r['speedup']:.2f} / {r['static_speedup']:.2f} / {r['shrinking_speedup']:.2f} | "
          f"{r['utilization_continuous']:.2f} / {r['utilization_static']:.2f} / "
          f"{r['utilization_shrinking']:.2f} | {r['same_tokens']} |")
  return "\n".join(lines)
