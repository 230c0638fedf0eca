r"""The embedded arithmetic study: policy SFT, MC-labelled PRM, ORM, verifier evaluation, search,
sequential revisions.

Command (the whole study, ``make study``; resumable, reruns skip finished work):

  python launch/run.py --config=experiments/arith.py --workdir=runs/arith --jobs=2

(--jobs=2: independent stages side by side, each in its own process; CPU hosts.) One stage and the inputs it is missing: ``--config=experiments/arith.py:STAGE``, e.g.
``:policy``, ``:prm``, ``:verifier_eval`` (stages: ``python launch/run.py --help``).
Overrides go inline, e.g. ``--config.policy.train.steps=100``. Another task:
``--task_module=my.module --config=experiments/arith.py:task=mytask`` (README).

Runtime: 42.7 min (make study at 0ff0837, venv included) on 2 cores of an AMD EPYC from an
empty XLA compilation cache (885 s of compiling; the transposed key cache and projections over
flattened rows); 51.6 min at 0ad43c6, also from an
empty XLA compilation cache (1019 s of compiling; 308 s and 42.7 min in all with 1c5bb71's
warm cache). 41.3 min (make study; its venv made before, 16 s), warm XLA cache, commit 02cba56 (policy 4:47, MC labels 6:28, revision model 13:56, search sweep
6:10; search then revise 0:36, adaptive allocation 1:16); 8619f07's took 47.0 min on another
day, when stages neither commit changed ran 17-24% slower. At 1645fdf (40.1 min; --jobs=2: policy 5 min, then two chains side by side, MC labels
6.5 min -> PRM 3 min -> search sweep 6 min and revision data 1 min -> revision model 12.5
min (800 steps, one on-policy round, each checkpoint chosen) -> revision ORM 3.5 min ->
revision sweep 4 min; the LM-head verifiers 10 min; reports 21 s). An Intel Xeon @ 2.50GHz
was about 1.3x slower, and its speed drifted by 10-20% between runs. ``make exchange`` adds
the 13x policy: about 35 min of training alone on 2 cores.
Expected result (README.md, "The study", has the tables; training results differ a
little between CPU models, so never rely on one machine's numbers): policy pass@1
about 0.46-0.50; majority and PRM-weighted best-of-64 near 0.61-0.65; a within-problem
PRM AUC near 0.66-0.69 (the policy's own likelihood: 0.80-0.85); vanilla best-of-N
falling far below pass@1 as N grows (the PRM is exploited). Revisions (at 1c5bb71, 42.7
min in all; revisions at temperature 0.5, chosen on held-out train problems): the revision
model's first answer level with the policy's pass@1; about 17% of correct answers revised
into incorrect ones and 10% of incorrect ones into correct ones; the most confident of one
chain's 4 answers level with its first (+0.015, not significant), but the best of them by
the likelihood verifier sft_lm (hier_prm, 5176766) about 6 points above it (+0.065 [+0.030,
+0.105]); sequential against parallel at N = 16 not significant (-0.040 with the revision
ORM, +0.030 with sft_lm). Compute-optimal selection does not
beat best-of-N weighted (the PRM is the weak part: search has little to choose from).

* tokenizer, policy: sentencepiece on the task; SFT of a 2-layer d128 decoder
  (0.5M params) on the 20k train problems. Sampling never emits unused pieces.
* difficulty: pass@1 of the first ``test_problems`` test problems from 64
  samples each (temperature 1): oracle difficulty bins.
* mc_labels, prm, orm: 4 policy samples on each of 2400 train problems, each
  step labelled by the fraction of 4 rollouts from its prefix that reach the
  right answer; a value head on the policy backbone (PRM: every step; ORM: the
  last step).
* verifier_eval: PRM / ORM / the policy's likelihood on the difficulty samples:
  majority, vanilla and weighted best-of-N for N = 1..64 with 95% CIs,
  within-problem AUC, calibration, the exploitation curve, step AUCs.
  The policy's confidence in its own tokens as verifiers (conf_*: DeepConf's lowest group,
  bottom-10% and tail confidence, self-certainty, mean log-prob; no training) are scored
  beside them (confidence.png). ``search.verifier`` chooses what scores search's steps
  (default 'prm'; a conf_* name costs 0 verifier FLOPs).
* verifier_choice (before verifier_eval): every verifier search can use (the PRM, the
  LM-head verifiers, the policy's confidence) ranked by within-problem AUC on 16 samples of
  each of 200 held-out train problems (after the MC-labelled ones; never a test problem),
  with the ensembles fitted there (ens_prm, ens_implicit_prm, ens_dpo, ens_conf: a base
  verifier's score and the policy's mean and least token log-prob combined by a logistic
  regression; ranked by 5-fold cross-validation over those problems; verifier_eval scores
  them on test problems); study.md names the one the claims used (``search.verifier``) and
  the one chosen (chosen_search searches with it).
* verifier_axis (``make verifier-axis``, not part of ``make study``; diagnosis only): the
  search methods against a synthetic verifier (the task's step checker through noise
  calibrated on train problems) at within-problem AUCs 0.6-0.97 ->
  WORKDIR/verifier_axis/latest/axis.md: where tree search starts to beat best-of-N.
* verifier_ablation: PRM variants (``ablation.variants``: hard labels) on the same
  samples.
* search_sweep, report: best-of-N weighted, beam search (M = 4), DVTS (M = 4),
  particle filtering and lookahead (k = 3) at budgets 4, 16 (and best-of-1), each with 2
  search seeds -> WORKDIR/report/latest/report.md (CIs, paired tests of the
  paper's findings). experiments/arith_paper_scale.py is the same at 500
  problems and budgets up to 64.
* revision_data, revision_model, revision_orm: 16 policy answers on each of 1000 train
  problems, trajectories of up to 4 incorrect answers closest (edit distance) to a
  correct one (30% of them keep a correct answer shown in context); the policy fine-tuned
  to write the correct answer after them (512-token context; 25% of its rows the policy's
  own SFT rows), its checkpoint chosen by chains on 200 held-out train problems; a value
  head on its backbone trained on its own answers to 400 other train problems, earlier
  answers in context.
* revision_sweep, revision_report: 16 revision chains per test problem (lengths 16, 8,
  4, 4, 2 x 4, 1 x 8; 48 answers) for one seed; every split of N = 1..16 into C
  chains of N / C revisions with majority, revision-ORM, single-answer verifier (the
  likelihood verifier sft_lm) and confidence selection (each flat and hierarchical), and
  chains gated by the revision model's confidence (threshold chosen on train chains) ->
  WORKDIR/revision_report/latest/revisions.md (Figures 6 and 7, the correct->incorrect
  rate, revisions against search at equal budgets and FLOPs; the (d) claims with the
  revision ORM, the revision model's confidence and the single-answer verifier).
* revision_ablation (``make retry-ablation``, not part of ``make study``, whose revisions.md
  picks it up): variants of what the revision model is made from
  (``revision_ablation.variants``; default: retry data in the policy's SFT mix, a row of
  1-2 erroneous solutions then the reference for 20% of the train problems, at the policy's
  2400 steps and at 2880), each with its own policy, pass@1, revision data and revision
  model, set beside the study's own (about 30 min on 2 cores).
* compute_optimal: per difficulty bin (oracle, and predicted from the PRM's mean score) and
  budget, the search / revision cell best on one fold of problems applied to the other (2
  folds x 25 splits); efficiency over best-of-N; with ``make exchange``, the 13x policy
  against the small one at FLOPs-matched budgets (paper Figure 9) ->
  WORKDIR/compute_optimal/latest/compute_optimal.md.
* hybrid_sweep (beyond the paper): search then revise: the sweep's beam search (M = 4, N = 4,
  seed 0) whose best candidate the revision model revises L = 1, 2, 4 times (the last
  revision, or the majority of the search's answer and the revisions); candidates of the
  combined compute-optimal curves. 1 min alone.
* allocation (beyond the paper): adaptive allocation, best-of-N in rounds over one budget
  shared by the test problems (a problem stops once its leading answer holds enough of the
  verifier-weighted vote; the others double their samples), its parameters chosen per budget
  on 200 held-out train problems (64 samples each), applied to the difficulty samples;
  compute_optimal.md sets it beside best-of-N weighted, majority and compute-optimal search.
  1.2 min alone. At 1645fdf's artifacts: level with best-of-N weighted at 4 and 16 (+0.010
  [-0.015, +0.040], +0.000 [-0.025, +0.025]), +0.020 [+0.005, +0.040] at 32.
* distill (``make distill``, not part of ``make study``, which picks it up): 2 rounds of
  fine-tuning the policy on its own best-of-8 answers (weighted by its confidence, no label)
  to 2000 train problems, a labelled reference beside it, and the larger policy's
  architecture trained from scratch to the same total FLOPs (pretraining + the rounds), paired
  with the last round -> WORKDIR/distill/latest/distill.md. 11 min 7 s alone (c814bfe; the
  matched model 5 min of it): round 2 pass@1 0.567 against the matched larger model's 0.067.
* study: the headline and every finding's verdict -> WORKDIR/study/latest/study.md.
"""

import ml_collections
from ml_collections import config_dict

from ttc_jax import tasks
from ttc_jax.configs import common


# Old part names of the launch scripts, kept as aliases.
ALIASES = {"verifiers": "verifier_eval"}


def _train(**overrides) -> ml_collections.ConfigDict:
  train = ml_collections.ConfigDict(dict(
      steps=1000,  # optimizer steps
      batch_size=64,  # sequences per step (the global batch; a multiple of the devices)
      learning_rate=1e-3,  # AdamW peak learning rate
      warmup_steps=50,  # linear warmup, then cosine decay to the end (< steps)
      final_lr_fraction=0.1,  # final learning rate / peak
      weight_decay=0.01,  # AdamW weight decay on matrices
      b1=0.9,  # Adam beta1
      b2=0.98,  # Adam beta2
      grad_clip=1.0,  # global-norm gradient clipping
      checkpoint_every=200,  # steps between checkpoints (resume points)
      log_every=50,  # steps between progress lines / metrics.jsonl rows
      seed=0,  # parameter init and data order
      bucket_pool_batches=16,  # batches of similar lengths, drawn from pools of this many
      # Each batch cut to its longest row rounded up to this (a compiled step per width). 16
      # against 32 (alone on 2 cores, the study's rows): the policy 14.2k -> 16.8k tok/s, the
      # PRM 15.0k -> 17.0k (padding 25% -> 18% of the tokens computed); 8: no faster than 16.
      pad_multiple=16,
      # > 0: a step's sequences packed into rows of this many tokens (the same loss per token).
      # Off on CPU: at 128 the policy trained at 11.8k tok/s against 14.2k with bucketed
      # batches (attention over the wider rows costs more than the padding it saves).
      pack_width=0,
      label_smoothing=0.0,  # LM objective only
  ))
  train.update(overrides)
  return train


def _arch(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      d_model=fields.get("d_model", 128),  # width
      num_layers=fields.get("num_layers", 2),  # decoder blocks
      num_heads=fields.get("num_heads", 4),  # query heads
      num_kv_heads=fields.get("num_kv_heads", 2),  # key/value heads (grouped-query attention)
      mlp_dim=fields.get("mlp_dim", 512),  # SwiGLU hidden width
      max_seq_len=fields.get("max_seq_len", 128),  # context: prompt + solution tokens
      rope_theta=fields.get("rope_theta", 10_000.0),  # RoPE base
  ))


def _verifier_arch() -> ml_collections.ConfigDict:
  """A verifier's architecture: None keeps the policy's value (read from the policy artifact)."""
  return ml_collections.ConfigDict({
      k: config_dict.placeholder(type(v)) for k, v in _arch().items()})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The study config; ``arg``: a stage to run (default 'study', the whole study),
  ``task=NAME`` (a registered task; its own section), or both: ``prm,task=NAME``."""
  stage, task, _ = common.parse_arg(arg, "arith")
  stage = ALIASES.get(stage, stage)
  c = ml_collections.ConfigDict()
  c.stage = stage  # The stage to run, with the inputs it is missing ('study': everything).
  c.seed = 0  # Seed of every random stream: row_keys(seed, stream, problem, sample, ...).
  # Which stage fills a role the study may do without (None: left out; the stages that read it
  # do without): the LM-head verifiers (DPO needs a train problem the policy answers both
  # right and wrong).
  c.stages = ml_collections.ConfigDict(dict(implicit_prm="implicit_prm", dpo="dpo",
                                            sft_lm="sft_lm"))

  # The task's own section: its keys are the task's (see the task's DEFAULTS).
  c.task = tasks.default_config(task)
  c.tokenizer = ml_collections.ConfigDict(dict(
      vocab_size=64,  # exact vocabulary size (padded with unused pieces)
      num_texts=5000,  # train problems the tokenizer is trained on
  ))
  c.test_problems = 200  # The first N test problems: difficulty, verifier eval, search.

  c.sampling = common.sampling()

  c.policy = ml_collections.ConfigDict(dict(
      model=_arch(),
      # Label smoothing 0.01 keeps ~1% of each next-token distribution off the
      # argmax, so temperature-1 samples make occasional independent slips besides
      # the policy's systematic errors: per-problem pass@1 is spread out instead of
      # 0-or-1, and voting / verifiers have something to fix.
      train=_train(steps=2400, batch_size=32, learning_rate=2e-3, log_every=100,
                   label_smoothing=0.01),
      # Retry data in the SFT mix (issue 27 item 5; Physics of Language Models 2.2): this share
      # of the train problems also gets a row showing 1..retry_attempts erroneous solutions
      # (an arithmetic slip, the task's own) in the revision prompt, then the reference
      # solution. 0: the paper's policy. An ablation (`make retry-ablation`): it needs
      # policy.model.max_seq_len=512 for the longer rows.
      retry_rate=0.0,
      retry_attempts=2,
  ))
  # The exchange of pretraining and test-time FLOPs (paper section 7; `make exchange`, not
  # part of `make study`, which picks its result up when present): a policy with about 13x
  # the parameters (the paper: 14x), trained like the policy on the same rows in the same
  # order. 6.7M params: 34 min of training on 2 cores.
  c.large_policy = ml_collections.ConfigDict(dict(
      model=_arch(d_model=384, num_layers=3, num_heads=6, num_kv_heads=3, mlp_dim=1536),
      # The policy's training recipe; the fields that fix which rows it sees, in which
      # order, follow the policy's (references: overriding the policy's changes both).
      # The policy's peak learning rate scaled by the width ratio (2e-3 x 128 / 384; muP's
      # rule for Adam on hidden matrices): at the policy's own 2e-3 the wider model's
      # training loss stayed above the policy's at every logged step (0.64 against 0.26 at
      # step 1200, 0.23 against 0.12 at the end), and its greedy pass@1 was 0.19.
      train=_train(learning_rate=6.7e-4, log_every=100, label_smoothing=0.01),
  ))
  for field in ("steps", "batch_size", "seed", "pad_multiple", "bucket_pool_batches"):
    c.large_policy.train[field] = c.policy.train.get_ref(field)
  for field in ("retry_rate", "retry_attempts"):
    c.large_policy[field] = c.policy.get_ref(field)
  c.exchange = ml_collections.ConfigDict(dict(
      samples_per_problem=16,  # the larger policy's samples per test problem (majority curve)
      subsamples=64,  # random N-subsets per problem for its majority accuracy at each N
  ))
  c.difficulty = common.difficulty()
  # Many problems with few rollouts beat few problems with many at the same cost: 3200 x 4
  # gave a within-problem AUC of 0.68-0.70 against 0.64-0.66 for 800 x 16 (ORM-weighted
  # best-of-64 0.615 against 0.52). 2400 problems keep make study within 30 minutes;
  # arith_paper_scale.py uses 3200.
  c.mc_labels = ml_collections.ConfigDict(dict(
      num_problems=2400,  # train problems sampled for PRM / ORM data
      samples_per_problem=4,  # policy samples per problem
      rollouts=4,  # MC rollouts per step prefix (the label is their success rate)
      problems_per_shard=400,  # resumable unit of work (a shard file)
  ))
  # Revision data (paper section 6.1; the revision stages run on their own for now:
  # --config=experiments/arith.py:revision_data). The paper samples 64 answers per problem.
  c.revision_data = ml_collections.ConfigDict(dict(
      num_problems=1000,  # train problems
      samples_per_problem=16,  # policy answers per problem (paper: 64)
      trajectories_per_problem=4,  # trajectories drawn per problem with a correct answer
      max_attempts=4,  # k ~ U{0..max_attempts} incorrect answers before the correct one
      # Share of keep trajectories: the correct target is also the last attempt shown (after
      # k - 1 incorrect ones), so a correct answer in context is seen and kept (0: the paper).
      # Chosen on train problems (the revision ORM's 800 chains of 4 answers on train problems
      # 1000-1399), accuracy by answer: the paper's data 0.409 0.365 0.324 0.320; policy rows
      # alone 0.426 0.311 0.256 0.218; with keep_rate=0.3 0.443 0.333 0.271 0.276 (AMD EPYC).
      # Checked again with the fixed LM head (e595de2; this and rounds.keep_rate together,
      # the criterion written down before the runs: the most confident of a chain's 4 answers
      # at the stage's chosen revision temperature, held-out train problems 1400-1599): keep
      # 0.3 / 0.5 / 0.7 give 0.575 / 0.570 / 0.550 (first answer 0.560 / 0.540 / 0.525; last
      # 0.480 / 0.510 / 0.495 at temperature 0.5 / 0 / 0.5; correct -> incorrect 0.183 /
      # 0.109 / 0.133), so 0.3 stayed. Chosen again with today's recipe (on-policy round,
      # revision temperature chosen; this and rounds.keep_rate together; the criterion written
      # down before the runs: the lowest correct -> incorrect whose last of 4 answers is not
      # significantly below the best keep rate's, paired over held-out train problems
      # 1400-1599; AMD EPYC, the 0ff0837 study's policy): keep 0.3 / 0.5 / 0.7 give last
      # answer 0.405 / 0.430 / 0.415 (0.7 - 0.5: -0.015 [-0.065, +0.035]), correct ->
      # incorrect 0.218 / 0.159 / 0.146 (first answer 0.500 / 0.485 / 0.480), so 0.7. 0.7 was
      # the grid's edge, so 0.9 was tried by the same rule (written before its run; the 9675383
      # study's policy): last answer 0.400 against 0.415, correct -> incorrect 0.149 against
      # 0.146, first answer 0.460 against 0.480 (paired 0.9 - 0.7: last -0.015 [-0.065,
      # +0.035], first -0.020 [-0.065, +0.025]): no fewer flips, so 0.7 stays.
      keep_rate=0.7,
      problems_per_shard=250,  # resumable unit of work (a shard file)
  ))
  c.revision_model = ml_collections.ConfigDict(dict(
      # The policy's backbone with room for the question, `window` earlier attempts (up to
      # max_new_tokens each) and the answer: the longest prompt of the default revision
      # data was 409 tokens.
      max_seq_len=512,
      window=4,  # earlier attempts shown (the paper's sliding window)
      # Share of the rows that are the policy's own SFT rows (question -> reference solution,
      # no attempts): a chain's first answer is conditioned like the policy's (0: the paper).
      policy_rows=0.25,
      # The checkpoint is chosen by what it is for: chains of `length` answers on held-out train
      # problems (after revision_data's and revision_orm's), the last answer's accuracy; the
      # checkpoints every `every` steps and the final one are the candidates (num_problems=0:
      # the final step).
      choice=ml_collections.ConfigDict(dict(first_problem=1400, num_problems=200, length=4,
                                            every=100,
                                            # Then the temperature of the revisions (every
                                            # answer after a chain's first), on the same
                                            # problems: at 800 steps (AMD EPYC) the last of 4
                                            # answers 0.425 / 0.485 / 0.445 at 1.0 / 0.5 / 0
                                            # (correct -> incorrect 0.247 / 0.165 / 0.157).
                                            revision_temperatures=(1.0, 0.5, 0.0))),
      # 800 steps, the final checkpoint chosen (choice above, on held-out train problems: the
      # last of 4 answers right 0.085 0.175 0.165 0.200 0.260 0.310 0.315 0.370 at steps
      # 100..800; a 400-step run's best was 0.245), though the rows are fit to 99.9% token
      # accuracy from step 600. 5:12 alone on 2 cores (AMD EPYC), the choice included.
      train=_train(steps=800, batch_size=32, learning_rate=1e-3, log_every=100),
      # On-policy rounds (RISE, arXiv 2407.18219): round r's model writes `chains` chains of
      # `length` answers to the first `num_problems` revision-data problems; trajectories over
      # each problem's own answers (incorrect ones closest to a correct one, `keep_rate` keep
      # trajectories) join the earlier rows, and the last round's model trains on them for
      # `train.steps` more steps (its checkpoint chosen as above). count=0: the paper's model.
      # Chosen on the held-out train problems of `choice` (last of 4 answers; correct ->
      # incorrect): round 0 (step 800) 0.370, 0.238; round 1 (step 400) 0.410, 0.227; a
      # second round 0.415, 0.242 for 3.3 more minutes, so one round (AMD EPYC).
      rounds=ml_collections.ConfigDict(dict(
          count=1, num_problems=500, chains=2, length=4, trajectories_per_problem=4,
          keep_rate=0.7, problems_per_shard=250,
          train=_train(steps=400, batch_size=32, learning_rate=5e-4, log_every=100,
                       checkpoint_every=100))),
  ))
  # The revision ORM (paper section 6.1): a value head on the revision model's backbone,
  # trained on the revision model's own answers with its earlier answers in context.
  c.revision_orm = ml_collections.ConfigDict(dict(
      first_problem=1000,  # train problems after the revision model's (revision_data)
      num_problems=400,
      chains=2,  # revision chains per problem
      length=4,  # answers per chain: contexts of 0..3 earlier answers
      # Resumable unit of work (a shard file); its problems' chains are sampled together
      # (800 rows per step; 100 problems per shard sampled only 8 answers/s).
      problems_per_shard=400,
      # 300 steps: 3 passes over its 3200 answers (600 steps took 10 of the study's minutes).
      train=_train(steps=300, batch_size=32, learning_rate=5e-4, warmup_steps=40),
  ))
  # Sequential revisions against parallel sampling (paper section 6.2): on the test
  # problems, every split of each budget N into C chains of length N / C.
  c.revisions = ml_collections.ConfigDict(dict(
      budgets=(1, 2, 4, 8, 16),  # powers of two (arith_paper_scale: up to 64)
      # Independent repeats (own random streams); each is ~6 min of the study on 2 cores, so
      # the default runs one (arith_paper_scale: 3).
      seeds=(0,),
      # Resumable unit of work (shard files per seed), sampled together: the later steps of
      # the long chains have one chain per problem, so larger shards make fuller batches.
      problems_per_shard=200,
      # The confidence verifier that also selects among the chains' answers (flat_conf,
      # hier_conf; no model call): the revision model's mean log-probability of an answer,
      # the verifier verifier_choice picked on held-out train problems in the fresh study.
      confidence="conf_logprob_mean",
      # The single-answer verifier of flat_prm and hier_prm (each answer read after the plain
      # prompt): 'prm' (the paper's) or 'sft_lm' (the likelihood verifier). 'sft_lm': the
      # verifier verifier_choice picks on held-out train problems (within-problem AUC 0.888
      # [0.853, 0.922] in the fresh study; the PRM's last step 0.662); on held-out train
      # problems 1400-1599 (one chain of 4 by the study's revision model) its best of the 4
      # answers is +0.055 [+0.015, +0.095] over the first answer, the PRM's -0.065 [-0.115,
      # -0.020] (AMD EPYC).
      verifier="sft_lm",
  ))
  c.prm = ml_collections.ConfigDict(dict(
      init="policy",  # 'policy': the policy's backbone (+ new blocks if deeper); 'scratch'
      model=_verifier_arch(),  # None: the policy's; 'policy' may add layers, 'scratch' any size
      labels="soft",  # 'soft': MC value of each step; 'hard': 1 if any rollout succeeds
      # Where the value head is trained: 'step_end' (where it is read) or 'every_token'
      # (each token of a step gets the step's label: dense supervision).
      label_positions="step_end",
      # Early stopping (the paper's recipe): this fraction of the MC-labelled train questions
      # is held out, and the checkpoint with the lowest loss on their samples is the model
      # (0: none, the last step), among the checkpoints every holdout_every steps and the last.
      holdout=0.0,
      holdout_every=100,
      train=_train(steps=800, batch_size=32, learning_rate=5e-4, warmup_steps=40),
  ))
  c.orm = ml_collections.ConfigDict(dict(
      init="policy",  # as for the PRM
      model=_verifier_arch(),
      holdout=0.0,  # as for the PRM
      holdout_every=100,
      train=_train(steps=800, batch_size=32, learning_rate=5e-4, warmup_steps=40),
  ))
  # LM-head verifiers (ttc_jax.verifiers.implicit): the policy fine-tuned on its own samples of
  # train problems (those with a parsable answer), scored by its implicit reward
  # beta * sum log(pi / pi_policy); pi_policy's log-probs come with the samples in search.
  c.verifier_samples = ml_collections.ConfigDict(dict(
      # Train problems after the MC-labelled and the verifier choice's (never the same ones).
      first_problem=3000,
      num_problems=6000,
      samples_per_problem=8,  # labelled by their outcome only: no rollouts
      problems_per_shard=1000,  # resumable unit of work (a shard file)
  ))
  c.implicit_prm = ml_collections.ConfigDict(dict(
      beta=0.05,  # Yuan et al. (arXiv 2412.01981)
      train=_train(steps=800, batch_size=32, learning_rate=2e-4, warmup_steps=40),
  ))
  c.dpo = ml_collections.ConfigDict(dict(
      beta=0.1,  # V-STaR (arXiv 2402.06457)
      max_pairs_per_problem=4,  # (correct, incorrect) pairs per train problem, drawn at random
      train=_train(steps=800, batch_size=16, learning_rate=2e-4, warmup_steps=40),  # pairs
  ))
  # The likelihood verifier (ttc_jax.verifiers.likelihood): the policy trained further by its
  # own SFT objective on reference solutions of train problems (after the verifier choice's
  # and adaptive allocation's, which it must not see: it is ranked and used there), for half
  # the policy's steps at half its peak learning rate; a solution's score is its mean token
  # log-probability under it. Settings fixed before the study measured it (issue 26).
  c.sft_lm = ml_collections.ConfigDict(dict(
      first_problem=3000,
      num_problems=17000,  # to the last train problem
      aggregation="mean",  # of the tokens' log-probabilities (confidence.AGGREGATIONS)
      train=_train(steps=1200, batch_size=32, learning_rate=1e-3, warmup_steps=20,
                   log_every=100, label_smoothing=0.01),
  ))
  c.verifier_eval = common.verifier_eval()
  # Variants of what the revision model is made from (`make retry-ablation`, not part of make
  # study, whose revisions.md picks it up when present): each makes its own policy, revision
  # data and revision model in the workdir. Retry data in the policy's SFT mix (issue 27 item
  # 5): a retry row for 20% of the train problems (3959 rows), in a 512-token context; at the
  # policy's 2400 steps (its plain rows seen 17% less often), and at 2880 steps (each plain
  # row seen as often as by the study's policy: 3.84 epochs); the 512-token context alone is
  # the control.
  c.revision_ablation = ml_collections.ConfigDict(dict(
      variants=("policy.model.max_seq_len=512",
                "policy.retry_rate=0.2,policy.model.max_seq_len=512",
                "policy.retry_rate=0.2,policy.model.max_seq_len=512,policy.train.steps=2880"),
  ))
  c.ablation = ml_collections.ConfigDict(dict(
      # PRM variants, each a comma-separated list of config overrides (the study's own PRM
      # is the first row); trained once per identity, reused on reruns.
      # (arith_paper_scale.py adds dense labels, a deeper PRM, scratch init, longer
      # training, other MC data.)
      # Hard MC labels (1 if any rollout succeeds: the value under a best-of-K prover) and the
      # task's step checker's exact labels (diagnosis only: do labels or capacity limit the
      # PRM?), beside the study's soft labels. Each variant trains a PRM (about 2.5 min on 2
      # cores); `make study` must fit 45 minutes. arith_paper_scale.py runs more.
      variants=("prm.labels=hard", "prm.labels=oracle"),
      n=(4, 16, 64),  # best-of-N sizes of the table
  ))
  # Budgets up to 16 with 2 seeds (each seed ~4.5 min of the study on 2 cores); the verifier
  # evaluation covers best-of-N up to 64 from its sample pool. arith_paper_scale: 1..64, 3
  # seeds. lookahead k = 3 puts N = 4 at beam search's budget 16.
  c.search = common.search()
  c.verifier_choice = common.verifier_choice()
  # Right after the MC-labelled problems (a reference: it follows mc_labels.num_problems).
  c.verifier_choice.first_problem = c.mc_labels.get_ref("num_problems")
  c.verifier_axis = common.verifier_axis()
  c.allocation = common.allocation()
  c.hybrid = common.hybrid()
  # Distillation (`make distill`, not part of `make study`, which picks it up when present):
  # 300 steps per round (1.5 passes over about 2000 rows and their SFT share).
  c.distill = common.distill()
  c.distill.train = _train(steps=300, batch_size=32, learning_rate=5e-4, warmup_steps=20,
                           log_every=100)
  c.compute_optimal = common.compute_optimal()
  c.report = common.report()
  return c
