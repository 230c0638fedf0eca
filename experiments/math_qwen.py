r"""Test-time compute on MATH-500 with real open models: an imported policy and PRM.

Command (checkpoint directories downloaded beforehand: nothing is fetched at run time):

  python launch/run.py --config=experiments/math_qwen.py --workdir=runs/math_qwen \
      --config.task.data_dir=/data --config.hf_policy.path=/ckpt/Qwen2.5-Math-1.5B-Instruct \
      --config.hf_prm.path=/ckpt/Qwen2.5-Math-PRM-7B --mesh=-1,4

``/data`` holds ``math/test.jsonl`` (MATH-500) and ``math/train_reconstructed.jsonl`` (see
shared/data/README.md). ``--mesh=-1,4``: every device of the host with 4-way tensor
parallelism (data=2 x model=4 on a TPU v5e-8 host or on 8 GPUs). One stage:
``--config=experiments/math_qwen.py:STAGE`` (``hf_policy``, ``hf_prm``, ``difficulty``,
``verifier_eval``, ``search_sweep``, ``report``, ``compute_optimal``, ``study``); GSM8K
instead of MATH-500: ``--config=experiments/math_qwen.py:task=gsm8k``.

Stages (the embedded study's, with imported models in the policy and PRM roles):

* hf_policy, hf_prm: the checkpoints, used in place and keyed by their files' sha256 (a
  changed checkpoint is a new artifact, and so is everything computed from it). The
  policy's prompts are its chat template's user turn after the system prompt below; its
  steps end at any token containing "\n\n". The PRM reads solutions in its own format
  (``hf_prm.format``: ``qwen2.5-math-prm``, ``math-shepherd`` or ``rlhflow``;
  ttc_jax.verifiers.adapters).
* difficulty: pass@1 of each test problem from ``difficulty.samples_per_problem``
  samples (oracle bins).
* verifier_eval: the PRM's step aggregations and the policy's likelihood as best-of-N
  selectors on those samples (no ORM: none is imported); the PRM's step AUC against MC
  labels when ``verifier_eval.auc_problems`` > 0.
* search_sweep, report: best-of-N (PRM-weighted), beam search, DVTS and particle filtering
  at each budget; the PRM scores each step incrementally on its own KV cache.
* compute_optimal, study: per-bin strategy selection with cross-validation, efficiency over
  best-of-N; every claim's verdict. There is no revision model for these checkpoints, so the
  revision stages are not part of this experiment (``stages`` below).

Without a PRM checkpoint: the policy's confidence in its own tokens scores search's steps
(ttc_jax.verifiers.confidence: 0 verifier FLOPs) and predicts difficulty, and no PRM is
imported or read: ``--config.stages.prm=None --config.search.verifier=conf_logprob_mean
--config.compute_optimal.predictor=policy_likelihood`` (no ``hf_prm.path`` needed).

The PRM and the policy's confidence together: ``--config.stages.verifier_choice=verifier_choice
--config.search.verifier=ens_prm``. The verifier choice samples the policy on 200 MATH train
problems (16 each) and fits a logistic regression over the logits of the PRM's last-step
score and the policy's mean and least token log-prob (ttc_jax.verifiers.ensemble); search then
scores each step by that combination, charged the PRM's tokens only (the confidence comes with
the sampled tokens).

Accelerator and runtime: an estimate from the memory planner and FLOPs, not a measurement
(nothing here has run on an accelerator yet; BUILD.md says what was verified where). With
the defaults below (bfloat16; contexts 4096; 64 rows per sampling call, 32 problems x N per
search call) and Qwen2.5-Math-1.5B-Instruct (1.54B parameters; 2 KV heads, replicated over
'model') with Qwen2.5-Math-PRM-7B (7.08B), ttc_jax.models.memory.plan gives per device:

  data=2 x model=4 (a TPU v5e-8 host, 16 GiB chips): 11.7 GiB (policy 1.08 GiB parameters,
    3.94 GiB KV cache; PRM 4.08 GiB parameters, 2.63 GiB KV cache; in another stage, the
    verifier evaluation's full passes of 8 rows instead of the caches: PRM 2.98 GiB, the
    policy's likelihood 2.46 GiB);
  one 80 GiB GPU (--mesh=1,1): 45.0 GiB.

FLOPs (ttc_jax.accounting, 1000-token context): 3.2 GFLOPs per policy token, 13.3 GFLOPs per
PRM token. The sweep below makes 500 x (16 + 2 x (85 + 3 x 84)) = 345k solutions; assuming
~600 tokens each (not measured here), about 2.1e8 policy tokens and as many PRM tokens: 3.5e18 FLOPs. That is 37
minutes at a v5e-8's bf16 peak (8 x 197 TFLOP/s) and 3.1 hours at one A100's (312 TFLOP/s);
decoding reaches a fraction of peak, so expect several times more (a few hours on a v5e-8).

Expected result: not yet measured with real checkpoints. The paper (Snell et al. 2024,
PaLM 2-S* on MATH) reports beam search over best-of-N at low budgets and on hard
problems, and compute-optimal search matching best-of-N with up to 4x fewer generations.

The CPU smoke test (tests/test_math_study.py) runs this config end to end with tiny random
checkpoints of the same architectures (Qwen2 LM, Qwen2 + 2-label step head) on 4 MATH-500
problems.
"""

import ml_collections
from ml_collections import config_dict

from ttc_jax import tasks
from ttc_jax.configs import common


# Qwen2.5-Math-Instruct's system prompt for chain-of-thought answers (its model card).
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _optional(value, kind) -> config_dict.FieldReference:
  """A field that may also be set to None."""
  return config_dict.FieldReference(value, field_type=kind)


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The study shrunk to a CPU smoke run (``:smoke``; ``make study-math-smoke``): 4 test
  problems, float32, short samples, budgets 1 and 4, one seed. For tiny checkpoints that
  check the wiring, not for results."""
  c.test_problems = 4
  c.sampling.update(temperature=1.0, max_new_tokens=48, batch_size=16)
  for section in (c.hf_policy, c.hf_prm):
    section.update(max_seq_len=1024, param_dtype="float32", dtype="float32")
  c.difficulty.samples_per_problem = 4
  c.verifier_eval.update(subsamples=4, auc_problems=1, auc_samples_per_problem=1, rollouts=2)
  c.search.update(budgets=(1, 4), seeds=(0,), beam_width=2, max_rounds=4, max_step_tokens=16,
                  rows_per_call=16)
  c.compute_optimal.update(repeats=2)
  c.report.difficulty_bins = 2
  c.verifier_choice.update(num_problems=2, samples_per_problem=2, ensemble_folds=2)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The real-model study config; ``arg``: a stage to run (default 'study'), ``task=gsm8k``
  (default MATH), ``smoke`` (:func:`smoke`), comma separated: ``difficulty,task=gsm8k``."""
  stage, task, switches = common.parse_arg(arg, "math", tasks=("math", "gsm8k"),
                                           switches=("smoke",))
  c = ml_collections.ConfigDict()
  c.stage = stage  # The stage to run, with the inputs it is missing.
  c.seed = 0  # Seed of every random stream.
  # Which stage fills each role: imported checkpoints as policy and PRM; no ORM, LM-head
  # verifiers (they train on MC-label samples: a PRM checkpoint is imported here), verifier
  # ablation, revisions (nor search then revise), larger policy, verifier choice or adaptive
  # allocation (its train pool is 200 train problems x difficulty.samples_per_problem MATH
  # samples), nor distillation (None: the stages that read them do without).
  c.stages = ml_collections.ConfigDict(dict(
      policy="hf_policy", prm="hf_prm", orm=None, implicit_prm=None, dpo=None, sft_lm=None,
      verifier_ablation=None,
      revision_report=None, large_policy_eval=None, verifier_choice=None, chosen_search=None,
      hybrid_sweep=None, allocation=None, distill=None))
  # data_dir: the folder holding math/*.jsonl and gsm8k/*.jsonl (shared/data's layout).
  c.task = tasks.default_config(task)
  c.test_problems = 500  # The first N test problems (MATH-500; GSM8K has 1319).
  # Qwen2.5-Math's recommended temperature; 64 rows per sampling call (memory: the docstring).
  c.sampling = common.sampling(temperature=0.7, max_new_tokens=2048, batch_size=64)
  c.hf_policy = ml_collections.ConfigDict(dict(
      path="",  # the policy checkpoint directory (config.json, *.safetensors, tokenizer.json)
      # context served (None: the checkpoint's max_position_embeddings)
      max_seq_len=_optional(4096, int),
      param_dtype=_optional("bfloat16", str),  # weights in memory (None: as stored)
      dtype=_optional("bfloat16", str),  # activations (None: param_dtype)
      chat=True,  # prompts as the chat template's user turn (an instruct model)
      system=_optional(QWEN_MATH_SYSTEM, str),  # system turn before it (None: none)
      step_delimiter="\n\n",  # a step ends at any token whose text contains this
  ))
  c.hf_prm = ml_collections.ConfigDict(dict(
      path="",  # the PRM checkpoint directory
      # How it reads a solution (verifiers.adapters.FORMATS): 'qwen2.5-math-prm' (a
      # 2-label step head), 'math-shepherd' or 'rlhflow' (an LM's "+"/"-" tokens).
      format="qwen2.5-math-prm",
      max_seq_len=_optional(4096, int),  # its context (None: the checkpoint's)
      param_dtype=_optional("bfloat16", str),
      dtype=_optional("bfloat16", str),
  ))
  c.difficulty = common.difficulty(samples_per_problem=16)
  # Full passes of 8 rows (memory: the docstring); no held-out step AUC by default.
  c.verifier_eval = common.verifier_eval(batch_size=8, subsamples=64, auc_problems=0,
                                         rollouts=8)
  # No lookahead at this scale. A step cut at max_step_tokens is scored as it stands and, when
  # it goes on, the PRM re-scores the row in full (counted in the budget): a cap above the
  # policy's usual step lengths keeps that rare. 32 problems x N per search call (memory).
  c.search = common.search(budgets=(1, 4, 16, 64), methods=("best_of_n", "beam", "dvts",
                                                            "particles"),
                           lookahead_steps=(), max_step_tokens=512, rows_per_call=32)
  c.verifier_axis = common.verifier_axis()
  # Off by default (stages.verifier_choice=None): the PRM and the policy's confidence fitted
  # together on the policy's samples of MATH train problems (ens_prm; the docstring).
  c.verifier_choice = common.verifier_choice(first_problem=0)
  c.compute_optimal = common.compute_optimal()
  c.report = common.report()
  return smoke(c) if "smoke" in switches else c
