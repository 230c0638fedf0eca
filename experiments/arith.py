r"""The embedded arithmetic study: policy SFT, MC-labelled PRM, ORM, verifier evaluation.

Parts (run in this order, in one workdir; each reads what the earlier ones wrote):

  python launch/train.py --config=experiments/arith.py:policy --workdir=runs/arith
  python launch/train.py --config=experiments/arith.py:prm --workdir=runs/arith
  python launch/train.py --config=experiments/arith.py:orm --workdir=runs/arith
  python launch/evaluate.py --config=experiments/arith.py:verifiers --workdir=runs/arith

The study (the main job, ``make study``) runs all of it and then the search sweep:

  python launch/study.py --config=experiments/arith.py:study --workdir=runs/arith

Overrides go inline, e.g. ``--config.train.steps=100`` (study:
``--config.policy.train.steps=100``, ``--config.study.num_problems=50``).

Runtimes and results measured on 2 CPU cores (fresh clone, default config):

* policy (~4.5 min): tokenizer + SFT of a 2-layer d128 decoder (0.5M params) on the
  train split; then pass@1 on the 500 test problems from 32 samples each at
  temperature 1 -> WORKDIR/policy/pass_at_1.json (+ histogram PNG).
  Measured: mean 0.406, 30% of problems >= 0.7, 42% <= 0.2, majority@32 0.598.
* prm (~5 min): 4 policy samples on each of 800 train problems, each step
  labelled by the fraction of 16 policy rollouts from its prefix that reach the
  right answer (WORKDIR/prm/labels, resumable shards); then a value head on the
  policy backbone trained with BCE on those soft labels.
* orm (~1.7 min): the same samples, one label per sample (final correctness).
* verifiers (~2 min): 64 policy samples per test problem (200) scored by PRM and
  ORM -> WORKDIR/verifiers/eval.json + eval.png (step AUC; majority / best-of-N /
  weighted best-of-N for N = 1..64). Measured: pass@1 0.392, PRM(last)-weighted
  best-of-64 0.560, ORM-weighted 0.510, majority 0.606, PRM step AUC 0.91.
* study (~28.5 min from an empty workdir, training included; ~17 min of it is
  the sweep, of which ~8 min XLA compilation): oracle difficulty from 64
  samples on 200 test problems, then
  best-of-N, beam search (M=4, sqrt(N)) and lookahead (k=1, 3) for N = 1..64
  -> WORKDIR/study/report.md, results.json, figures.
"""

import ml_collections

PARTS = ("policy", "prm", "orm", "verifiers", "study")


def _train(**overrides) -> ml_collections.ConfigDict:
  train = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=64,
      learning_rate=1e-3,
      warmup_steps=50,
      final_lr_fraction=0.1,
      weight_decay=0.01,
      b1=0.9,
      b2=0.98,
      grad_clip=1.0,
      checkpoint_every=200,
      log_every=50,
      seed=0,
      bucket_pool_batches=16,  # batches of similar lengths ...
      pad_multiple=32,  # ... cut to 32, 64, 96 or 128 tokens: 4 compiled shapes
      label_smoothing=0.0,
  ))
  train.update(overrides)
  return train


def _part_sections(part: str) -> dict:
  """The sections specific to one part (train / eval / labels)."""
  if part == "policy":
    # Label smoothing 0.01 keeps ~1% of each next-token distribution off the
    # argmax, so temperature-1 samples make occasional independent slips besides
    # the policy's systematic errors: per-problem pass@1 is spread out instead of
    # 0-or-1, and voting / verifiers have something to fix (without it
    # majority@32 gains ~5 points over pass@1; with it ~19).
    return dict(
        train=_train(steps=2400, batch_size=32, learning_rate=2e-3, log_every=100,
                     label_smoothing=0.01),
        eval=ml_collections.ConfigDict(dict(num_problems=500, samples_per_problem=32)))
  if part == "prm":
    return dict(
        labels=ml_collections.ConfigDict(dict(
            num_problems=800, samples_per_problem=4, rollouts=16, problems_per_shard=100)),
        train=_train(steps=800, batch_size=32, learning_rate=5e-4, warmup_steps=40))
  if part == "orm":
    return dict(train=_train(steps=800, batch_size=32, learning_rate=5e-4, warmup_steps=40))
  if part == "verifiers":
    return dict(eval=ml_collections.ConfigDict(dict(
        num_problems=200, samples_per_problem=64, subsamples=256,
        auc_problems=100, auc_samples_per_problem=2, rollouts=16)))
  if part == "study":
    return dict(study=ml_collections.ConfigDict(dict(
        num_problems=200,  # test problems searched by every cell
        difficulty_samples=64,  # pass@1 samples per problem for the oracle bins
        budgets=(1, 2, 4, 8, 16, 32, 64),  # N
        beam_width=4,  # M (the other beam search uses M = sqrt(N))
        lookahead_steps=(1, 3),  # k
        max_rounds=40,
        max_step_tokens=24,
        rows_per_call=512,  # problems x N per search call (larger batches decode slower here)
    )))
  raise ValueError(f"unknown part {part!r}; expected one of {PARTS}.")


def get_config(part: str = "policy") -> ml_collections.ConfigDict:
  """Config of one part; see the module docstring.

  The 'study' config holds the shared sections plus every training part's own
  sections under its name (``policy.train``, ``prm.labels``, ...), so the whole
  study is configured in one place (e.g. ``--config.policy.train.steps=100``).
  """
  if part not in PARTS:
    raise ValueError(f"unknown part {part!r}; expected one of {PARTS}.")
  c = ml_collections.ConfigDict()
  c.part = part
  c.seed = 0

  # The task and the policy architecture are fixed by the policy part; later
  # parts check that theirs match what the workdir's policy was trained with.
  c.task = ml_collections.ConfigDict(dict(
      name="arith", seed=0, num_train=20_000, num_test=500,
      min_ops=1, max_ops=8, min_operand_digits=1, max_operand_digits=2,
      max_value=999, max_factor=9))
  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=64, num_texts=5000))
  c.model = ml_collections.ConfigDict(dict(
      d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=512,
      max_seq_len=128, rope_theta=10_000.0))
  c.seq_len = 128  # Token rows (BOS prompt solution EOS) in training data.

  # Sampling used by every part (pass@1, labels, verifier eval, search).
  c.sampling = ml_collections.ConfigDict(dict(
      temperature=1.0, max_new_tokens=96, batch_size=512))

  for key, value in _part_sections(part).items():
    c[key] = value
  if part == "study":
    for sub in ("policy", "prm", "orm", "verifiers"):
      c[sub] = ml_collections.ConfigDict(_part_sections(sub))
  return c
