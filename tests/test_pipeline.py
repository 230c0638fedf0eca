"""The pipeline: stores, identities (stale work never reused), validation, errors, CLI."""

import errno
import json
import os
import re
import shutil

import numpy as np
import pytest

import pipeline_utils as pu
from ttc_jax.pipeline import artifacts
from ttc_jax import tasks
from ttc_jax.models import checkpoints
from ttc_jax.pipeline import STAGES
from ttc_jax.pipeline.stages import CHECKS
from ttc_jax.pipeline import Pipeline
from ttc_jax.pipeline import store
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.search.registry import sweep
from ttc_jax.tokenizers.spm import SentencePieceTokenizer


# ------------------------------------------------------------------------- store
def test_cell_log_survives_a_torn_line(tmp_path):
  log = store.CellLog(str(tmp_path / "cells.jsonl"))
  log.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
  with open(log.path, "a") as f:
    f.write('{"key": "c", "v": ')  # killed mid-write
  assert sorted(log.read()) == ["a", "b"]
  log.append([{"key": "c", "v": 3}])
  assert {k: r["v"] for k, r in log.read().items()} == {"a": 1, "b": 2, "c": 3}
  with open(log.path) as f:
    assert [json.loads(line)["key"] for line in f] == ["a", "b", "c"]


def test_shards_list_the_missing_work(tmp_path):
  shards = store.Shards(str(tmp_path), "labels", 3)
  shards.save(1, {"x": np.arange(3)})
  open(str(tmp_path / "labels-00002.npz.tmp-123"), "w").close()  # torn write of a killed run
  assert shards.todo() == [0, 2]
  assert not os.path.exists(tmp_path / "labels-00002.npz.tmp-123")
  np.testing.assert_array_equal(shards.load(1)["x"], np.arange(3))
  with open(shards.path(1), "wb") as f:
    f.write(b"garbage")
  with pytest.raises(store.StoreError, match=r"labels-00001.npz is unreadable.*Delete it"):
    shards.load(1)


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(json, "dump", full)
  with pytest.raises(store.StoreError, match=r"could not write .*x.json: \[Errno 28\] No space "
                     r"left on device \(the disk is full\)"):
    store.write_json(str(tmp_path / "x.json"), {"a": 1})
  assert os.listdir(tmp_path) == []  # no temporary file left behind


def test_a_full_disk_while_checkpointing_is_one_line(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  mgr = checkpoints.manager(str(tmp_path / "ckpt"))

  def full(*args, **kwargs):
    raise RuntimeError("orbax failed") from OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(mgr, "save", full)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"could not write checkpoint step 3 to .*ckpt: \[Errno 28\] No space "
                           r"left on device \(free some disk space"):
    checkpoints.save(mgr, 3, params=ocp.args.StandardSave({"w": np.zeros(2)}))


# -------------------------------------------------------------------- identities
# The stages of the embedded study (the others fill roles for imported checkpoints).
ARITH_STAGES = [s for s in STAGES if s not in ("hf_policy", "hf_prm")]


def _entries(workdir) -> list[str]:
  """The stage directories of a workdir (not its lock or digest cache)."""
  return sorted(n for n in os.listdir(workdir) if not n.startswith("."))


def _ids(config, workdir="/nonexistent"):
  p = Pipeline(config, workdir)
  return {name: p.identity(name) for name in ARITH_STAGES}


def _changed(a, b):
  return sorted(k for k in a if a[k] != b[k])


def test_a_key_added_at_its_old_behaviour_keeps_the_artifacts_made_before_it():
  """train.pack_width came after artifacts were made: at 0 (one sequence per row, as before)
  an identity is what it was without the key; any other value is keyed."""
  config = pu.tiny_config()
  base = _ids(config)
  for section in ("policy", "prm"):
    del config[section].train["pack_width"]
  for section in ("prm", "orm"):  # early stopping (0: none, as before)
    del config[section]["holdout"], config[section]["holdout_every"]
  for section in ("policy", "large_policy"):  # retry data in the SFT mix (0: none)
    del config[section]["retry_rate"], config[section]["retry_attempts"]
  del config.revisions["verifier"]  # the revision sweep's single-answer verifier (the PRM)
  assert _ids(config) == base
  retry = _changed(base, _ids(pu.tiny_config(policy__retry_rate=0.2)))
  assert "policy" in retry and "large_policy" in retry and "data" not in retry
  assert "prm" in _changed(base, _ids(pu.tiny_config(prm__holdout=0.1)))
  changed = _changed(base, _ids(pu.tiny_config(prm__train__pack_width=64)))
  assert "prm" in changed and "policy" not in changed
  # The process advantage in beam search (0: by Q alone, as before): the search stages only.
  assert _changed(base, _ids(pu.tiny_config(search__advantage=1.0))) == [
      "chosen_search", "compute_optimal", "hybrid_sweep", "report", "revision_report",
      "search_sweep", "study", "verifier_axis"]


def test_a_change_invalidates_what_depends_on_it_and_nothing_else():
  base = _ids(pu.tiny_config())
  downstream_of_policy = ["allocation", "chosen_search", "compute_optimal", "difficulty",
                          "distill", "dpo", "hybrid_sweep", "implicit_prm", "mc_labels",
                          "orm", "policy", "prm", "report", "revision_ablation",
                          "revision_data", "revision_model",
                          "revision_orm", "revision_report", "revision_sweep", "search_sweep",
                          "sft_lm", "study", "verifier_ablation", "verifier_axis",
                          "verifier_choice", "verifier_eval", "verifier_samples"]
  assert _changed(base, _ids(pu.tiny_config(policy__train__learning_rate=1e-3))) == \
      downstream_of_policy
  # The data order is the larger policy's too (the exchange's same pretraining tokens).
  assert _changed(base, _ids(pu.tiny_config(policy__train__seed=1))) == sorted(
      downstream_of_policy + ["large_policy", "large_policy_eval"])
  # (and distill's: its larger architecture trained to the same FLOPs takes that recipe)
  assert _changed(base, _ids(pu.tiny_config(large_policy__train__learning_rate=1e-3))) == [
      "distill", "large_policy", "large_policy_eval"]
  assert _changed(base, _ids(pu.tiny_config(prm__train__steps=7))) == [
      "allocation", "chosen_search", "compute_optimal", "hybrid_sweep", "prm", "report", "revision_report", "revision_sweep", "search_sweep",
      "study", "verifier_ablation", "verifier_choice", "verifier_eval"]
  # Adaptive allocation weighs by the chosen verifier; its train problems follow the choice's.
  # The evaluation scores the ensembles fitted there (the search sweep does not read them).
  for change in (dict(verifier_choice__num_problems=6), dict(verifier_choice__ensemble_folds=3)):
    assert _changed(base, _ids(pu.tiny_config(**change))) == [
        "allocation", "chosen_search", "compute_optimal", "report", "study", "verifier_choice",
        "verifier_eval"]
  assert _changed(base, _ids(pu.tiny_config(allocation__budgets=(1, 2)))) == [
      "allocation", "compute_optimal", "study"]
  # The tiny study leaves the LM-head verifiers out (stages.dpo=None): nothing reads them.
  assert _changed(base, _ids(pu.tiny_config(dpo__beta=0.2))) == ["dpo"]
  assert _changed(base, _ids(pu.tiny_config(sft_lm__train__steps=7))) == ["sft_lm"]
  # The revision sweep's answers read by the likelihood verifier instead of the PRM.
  by_sft = dict(stages__sft_lm="sft_lm", revisions__verifier="sft_lm")
  assert "revision_sweep" in _changed(_ids(pu.tiny_config(**by_sft)),
                                      _ids(pu.tiny_config(**by_sft, sft_lm__train__steps=7)))
  assert "revision_sweep" not in _changed(_ids(pu.tiny_config(**by_sft)),
                                          _ids(pu.tiny_config(**by_sft, prm__train__steps=7)))
  # (distill's train problems start after the verifier samples')
  assert _changed(base, _ids(pu.tiny_config(verifier_samples__num_problems=8))) == [
      "distill", "dpo", "implicit_prm", "verifier_samples"]
  assert _changed(base, _ids(pu.tiny_config(distill__rounds=3))) == ["distill"]
  assert _changed(base, _ids(pu.tiny_config(hybrid__revisions=(1,)))) == [
      "compute_optimal", "hybrid_sweep", "study"]
  # With them: retraining the DPO verifier redoes what reads it, never the PRM's search sweep
  # (it reads an LM-head verifier only when search.verifier names it).
  lm = dict(stages__dpo="dpo", stages__implicit_prm="implicit_prm")
  assert _changed(_ids(pu.tiny_config(**lm)), _ids(pu.tiny_config(**lm, dpo__beta=0.2))) == [
      "allocation", "chosen_search", "compute_optimal", "dpo", "report", "study", "verifier_choice",
      "verifier_eval"]
  with_sft = dict(lm, stages__sft_lm="sft_lm")
  assert _changed(_ids(pu.tiny_config(**with_sft)),
                  _ids(pu.tiny_config(**with_sft, sft_lm__train__steps=7))) == [
      "allocation", "chosen_search", "compute_optimal", "report", "sft_lm", "study",
      "verifier_choice", "verifier_eval"]
  # Search by an ensemble (the PRM with the policy's confidence) reads its fitted weights.
  by_ens = dict(search__verifier="ens_prm")
  assert "search_sweep" in _changed(_ids(pu.tiny_config(**by_ens)),
                                    _ids(pu.tiny_config(**by_ens, verifier_choice__ensemble_folds=3)))
  by_dpo = dict(lm, search__verifier="dpo")
  assert "search_sweep" in _changed(_ids(pu.tiny_config(**by_dpo)),
                                    _ids(pu.tiny_config(**by_dpo, dpo__beta=0.2)))
  assert _changed(base, _ids(pu.tiny_config(ablation__variants=("prm.init=scratch",)))) == [
      "compute_optimal", "report", "study", "verifier_ablation"]
  assert _changed(base, _ids(pu.tiny_config(search__max_rounds=5))) == [
      "chosen_search", "compute_optimal", "hybrid_sweep", "report", "revision_report", "search_sweep", "study", "verifier_axis"]
  assert _changed(base, _ids(pu.tiny_config(verifier_axis__aucs=(0.7, 0.9)))) == [
      "verifier_axis"]
  assert _changed(base, _ids(pu.tiny_config(compute_optimal__repeats=3))) == [
      "chosen_search", "compute_optimal", "study"]
  assert _changed(base, _ids(pu.tiny_config(tokenizer__vocab_size=48))) == [
      s for s in sorted(ARITH_STAGES) if s != "data"]
  assert _changed(base, _ids(pu.tiny_config(report__difficulty_bins=3))) == [
      "allocation", "chosen_search", "compute_optimal", "report", "revision_report", "study"]
  assert _changed(base, _ids(pu.tiny_config(revision_data__samples_per_problem=8))) == [
      "compute_optimal", "hybrid_sweep", "revision_ablation", "revision_data", "revision_model",
      "revision_orm", "revision_report", "revision_sweep", "study"]
  # The revision ablation's variants: only it (revisions.md reads it when it has run).
  assert _changed(base, _ids(pu.tiny_config(
      revision_ablation__variants=("policy.retry_rate=0.3",)))) == ["revision_ablation"]
  assert _changed(base, _ids(pu.tiny_config(revisions__seeds=(0, 1)))) == [
      "compute_optimal", "revision_report", "revision_sweep", "study"]
  assert _changed(base, _ids(pu.tiny_config(revision_orm__length=3))) == [
      "compute_optimal", "revision_orm", "revision_report", "revision_sweep", "study"]
  # Speed-only fields never change a result, so they never change an identity.
  for key, value in [("sampling__batch_size", 64), ("search__rows_per_call", 8),
                     ("policy__train__checkpoint_every", 8), ("prm__train__log_every", 1)]:
    assert _changed(base, _ids(pu.tiny_config(**{key: value}))) == [], key


def test_stages_declare_what_they_read():
  config = pu.tiny_config()
  order = list(STAGES)
  for name, stage in STAGES.items():
    for section in stage.sections:
      assert section in config or name in ("hf_policy", "hf_prm"), (name, section)
    for i in stage.inputs:
      assert order.index(i) < order.index(name), (name, i)
    assert stage.fills is None or stage.fills in STAGES, name
    assert set(stage.may_lack) <= set(stage.inputs), name
  assert Pipeline(config, "/x").plan("prm") == ["data", "tokenizer", "policy", "mc_labels",
                                                 "prm"]


# -------------------------------------------------------------------- validation
@pytest.mark.parametrize("overrides, match", [
    (dict(prm__train__warmup_steps=6), r"prm.train.warmup_steps=6 must be an integer in "
                                        r"\[0, prm.train.steps=6\)"),
    (dict(policy__model__d_model=30), r"policy.model: head_dim=15 must be even for RoPE"),
    (dict(task__max_ops=0), r"config.task \(arith\): Need 1 <= min_ops <= max_ops"),
    (dict(test_problems=41), r"test_problems=41: expected an integer \[1, 40\]"),
    (dict(mc_labels__rollouts=5), r"sampling.batch_size=32 must be a multiple of "
                                   r"mc_labels.rollouts=5"),
    (dict(search__beam_width=3), r"search.beam_width=3 must divide every budget"),
    (dict(search__advantage=-0.5), r"search.advantage=-0.5: expected a finite number >= 0"),
    (dict(search__max_step_tokens=40), r"search.max_step_tokens=40: expected an integer "
                                        r"\[1, 32\]"),
    (dict(prm__model__d_model=64), r"prm.model.d_model=64 differs from the policy's 32: .*"
                                    r"prm.init='scratch'"),
    (dict(orm__init="random"), r"orm.init='random': expected 'policy' or 'scratch'"),
    (dict(report__difficulty_bins=9), r"report.difficulty_bins=9: expected an integer \[1, 8\]"),
    (dict(stage="verifiers"), r"stage='verifiers': expected one of \['data'"),
    (dict(ablation__variants=("search.beam_width=2",)),
     r"ablation variant 'search.beam_width=2': 'search.beam_width' does not change the PRM"),
    (dict(ablation__variants=("prm.labels=bogus",)),
     r"ablation variant 'prm.labels=bogus': prm.labels='bogus': expected 'soft'"),
    (dict(ablation__variants=("prm.nokey=1",)), r"variant key 'prm.nokey': not a config key"),
    (dict(search__verifier="orm"), r"search.verifier='orm': expected 'prm' \(the study's PRM\), "
                                   r"'implicit_prm' or 'dpo' or 'sft_lm' \(LM-head verifiers "
                                   r"trained from "
                                   r"the policy\), 'policy_likelihood' or "
                                   r"conf_<token>_<aggregation>"),
    (dict(search__verifier="dpo"), r"search.verifier='dpo': this experiment leaves the dpo "
                                   r"stage out \(stages.dpo=None\)"),
    (dict(stages__dpo="dpo", dpo__beta=0), r"dpo.beta=0.0: expected a number > 0"),
    (dict(stages__implicit_prm="implicit_prm", verifier_samples__first_problem=10),
     r"verifier_samples.first_problem=10: expected an integer >= 16"),
    (dict(stages__sft_lm="sft_lm", sft_lm__first_problem=10),
     r"sft_lm: train problems 10..49 overlap verifier_choice's 8..15 \(chosen on"),
    (dict(stages__sft_lm="sft_lm", sft_lm__first_problem=18),
     r"sft_lm: train problems 18..57 overlap allocation's 16..19"),
    (dict(stages__sft_lm="sft_lm", allocation__first_problem=30),
     r"allocation: train problems 30..33 overlap sft_lm's 24..63"),
    (dict(stages__sft_lm="sft_lm", sft_lm__num_problems=190),
     r"sft_lm: train problems 24..213 but the task has 200"),
    (dict(stages__sft_lm="sft_lm", sft_lm__aggregation="median"),
     r"sft_lm.aggregation='median': expected one of \('mean'"),
    (dict(search__verifier="ens_dpo", verifier_choice__ensembles=("conf",)),
     r"search.verifier='ens_dpo': verifier_choice.ensembles=\('conf',\) does not fit it"),
    (dict(search__verifier="ens_dpo"), r"search.verifier='ens_dpo': this experiment leaves the "
                                       r"dpo stage out"),
    (dict(search__verifier="ens_prm", stages__verifier_choice=None),
     r"search.verifier='ens_prm': an ensemble is fitted by the verifier choice"),
    (dict(revisions__verifier="dpo"), r"revisions.verifier='dpo': expected one of \('prm', "
                                      r"'sft_lm'\)"),
    (dict(revisions__verifier="sft_lm"), r"revisions.verifier='sft_lm': this experiment leaves "
                                         r"the sft_lm stage out"),
    (dict(search__verifier="conf_topk_median"), r"search.verifier='conf_topk_median': confidence "
                                                r"verifier 'conf_topk_median'.*aggregation one of"),
    (dict(compute_optimal__predictor="conf_x_mean"), r"compute_optimal.predictor='conf_x_mean'"),
    (dict(verifier_choice__first_problem=4), r"verifier_choice.first_problem=4: expected an "
                                             r"integer >= 8"),
    (dict(verifier_choice__num_problems=193), r"verifier_choice: train problems 8..200 but the "
                                              r"task has 200"),
    (dict(allocation__budgets=(1, 5)), r"allocation.budgets=\(1, 5\): expected generations per "
                                       r"problem in \[1, 4\]"),
    (dict(allocation__verifier="best"), r"allocation.verifier='best': expected 'chosen' or a "
                                        r"score"),
    (dict(allocation__verifier="dpo"), r"allocation.verifier='dpo': this experiment leaves the "
                                       r"dpo stage out"),
    (dict(allocation__first_problem=2), r"allocation: train problems 2..5 overlap mc_labels's "
                                        r"0..7"),
    (dict(allocation__selection="vanilla"), r"allocation.selection='vanilla': expected one of"),
    (dict(hybrid__methods=("lookahead",)), r"hybrid.methods=\('lookahead',\): expected search "
                                           r"families of"),
    (dict(hybrid__budgets=(3,)), r"hybrid.budgets=\(3,\): search.beam_width=2 must divide"),
    (dict(hybrid__revisions=(0, 2)), r"hybrid.revisions=\(0, 2\): expected numbers of "
                                     r"revisions >= 1"),
])
def test_bad_configs_are_named_before_anything_is_written(tmp_path, overrides, match):
  p = Pipeline(pu.tiny_config(**overrides), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match=match):
    p.run()
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("overrides, match", [
    (dict(verifier_axis__aucs=(0.9, 1.0)), r"verifier_axis.aucs=\(0.9, 1.0\): expected increasing "
                                           r"numbers in \[0.5, 1\)"),
    (dict(verifier_axis__methods=("beam",)), r"verifier_axis.methods=\('beam',\): expected "
                                             r"best_of_n and any of"),
    (dict(verifier_axis__budgets=(8,)), r"verifier_axis.budgets=\(8,\): expected budgets of "
                                        r"search.budgets=\(1, 2, 4\)"),
])
def test_bad_verifier_axis_configs_are_named_before_anything_is_written(tmp_path, overrides,
                                                                         match):
  """`make verifier-axis` (not part of the study: its section is checked when it runs)."""
  p = Pipeline(pu.tiny_config(**overrides), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match=match):
    p.run("verifier_axis")
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("overrides, match", [
    (dict(distill__verifier="prm_last"), r"distill.verifier='prm_last': expected the policy's "
                                         r"confidence"),
    (dict(distill__variants=("selected", "oracle")), r"distill.variants=\('selected', "
                                                     r"'oracle'\): expected distinct names"),
    (dict(distill__eval_n=(2, 32)), r"distill.eval_n=\(2, 32\): expected integers in \[1, 4\]"),
    (dict(distill__num_problems=170), r"distill: train problems 40..209 but the task has 200"),
    (dict(distill__rounds=0), r"distill.rounds=0: expected an integer >= 1"),
])
def test_bad_distill_configs_are_named_before_anything_is_written(tmp_path, overrides, match):
  """`make distill` (not part of the study: its section is checked when it runs)."""
  p = Pipeline(pu.tiny_config(**overrides), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match=match):
    p.run("distill")
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.e2e
def test_a_plan_that_does_not_fit_memory_stops_before_a_model_stage(tmp_path):
  """The memory planner runs before the first model stage: a search call of 2^24 rows
  needs far more than a device has; only the data and tokenizer stages were written."""
  p = Pipeline(pu.tiny_config(search__rows_per_call=2 ** 24), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match=r"memory per device: needs [\d.]+ GiB per device "
                                        r"\(policy parameters .* prm KV cache .*\), [\d.]+ GiB "
                                        r"available.*rows_per_call"):
    p.run("difficulty")
  assert _entries(tmp_path / "w") == ["data", "tokenizer"]


def test_a_scratch_verifier_may_have_its_own_size():
  from ttc_jax.models.transformer import TransformerConfig
  from ttc_jax.pipeline.stages.verifiers import verifier_config
  config = pu.tiny_config(prm__init="scratch", prm__model__d_model=64, prm__model__num_layers=2)
  policy = TransformerConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2,
                             num_kv_heads=1, mlp_dim=64, max_seq_len=64)
  prm = verifier_config(policy, config.prm, "prm")
  assert (prm.d_model, prm.num_layers, prm.head, prm.mlp_dim) == (64, 2, "value", 64)
  Pipeline(config, "/x").validate()  # a valid config


@pytest.mark.e2e
def test_lengths_are_checked_with_their_numbers(tmp_path):
  workdir = str(tmp_path / "w")
  Pipeline(pu.tiny_config(), workdir).run("tokenizer")
  short = Pipeline(pu.tiny_config(sampling__max_new_tokens=8, search__max_step_tokens=8),
                   workdir)
  with pytest.raises(ConfigError, match=r"sampling.max_new_tokens=8 is shorter than the longest "
                                        r"reference solution \((\d+) tokens with EOS"):
    short.run("policy")
  tight = Pipeline(pu.tiny_config(policy__model__max_seq_len=36), workdir)
  with pytest.raises(ConfigError, match=r"the longest prompt \(\d+ tokens, arith/\w+/\d+\) \+ "
                                        r"sampling.max_new_tokens=32 = \d+ exceeds "
                                        r"policy.model.max_seq_len=36"):
    tight.run("policy")
  tiny = Pipeline(pu.tiny_config(policy__model__max_seq_len=16), workdir)
  with pytest.raises(ConfigError, match=r"policy.model.max_seq_len=16 is shorter than the longest "
                                        r"training row \(\d+ tokens: BOS \+ prompt \+ solution"):
    tiny.run("policy")
  # Retry rows (revision prompts with erroneous solutions) are checked the same way.
  retry = Pipeline(pu.tiny_config(policy__retry_rate=1.0, policy__retry_attempts=4), workdir)
  with pytest.raises(ConfigError, match=r"policy.model.max_seq_len=64 is shorter than the longest "
                                        r"retry row \(\d+ tokens: BOS \+ revision prompt \+ "
                                        r"solution \+ EOS, of 200 rows at policy.retry_rate=1.0\)"):
    retry.run("policy")
  assert _entries(workdir) == ["data", "tokenizer"]  # no policy was started


def test_a_task_section_belongs_to_its_task():
  section = tasks.default_config("arith")
  section.name = "nope"
  with pytest.raises(ValueError, match=r"Unknown task 'nope'; known tasks: \[.*'arith'"):
    tasks.build(section)
  import heldout_task  # noqa: F401  registers 'modsum'
  section = tasks.default_config("arith")
  section.name = "modsum"
  with pytest.raises(ValueError, match=r"not a section of task 'modsum': unexpected keys "
                                       r"\['max_factor'.*task=modsum"):
    tasks.build(section)
  assert tasks.build(tasks.default_config("modsum")).name == "modsum"


def test_a_damaged_tokenizer_file_names_its_path(tmp_path):
  path = str(tmp_path / "tokenizer.model")
  with open(path, "wb") as f:
    f.write(b"\x00garbage")
  with pytest.raises(ValueError, match=re.escape(path) + r" is not a tokenizer model"):
    SentencePieceTokenizer.load(path)


@pytest.mark.e2e
def test_a_stage_that_dies_is_rerun_not_reused(tmp_path, monkeypatch):
  """An artifact is done only after every output is written (no done marker first)."""
  import dataclasses
  from ttc_jax.pipeline import runner
  workdir = str(tmp_path / "w")
  stage = STAGES["tokenizer"]

  def dies(ctx):
    ctx.out.write_text("half", "...")
    raise KeyboardInterrupt  # killed mid-stage
  monkeypatch.setitem(runner.STAGES, "tokenizer", dataclasses.replace(stage, run=dies))
  with pytest.raises(KeyboardInterrupt):
    Pipeline(pu.tiny_config(), workdir).run("tokenizer")
  p = Pipeline(pu.tiny_config(), workdir)
  assert not p.is_done("tokenizer")
  assert json.load(open(os.path.join(p.directory("tokenizer"), "stage.json")))["status"] == \
      "running"
  monkeypatch.setitem(runner.STAGES, "tokenizer", stage)
  Pipeline(pu.tiny_config(), workdir).run("tokenizer")
  assert p.is_done("tokenizer")


# --------------------------------------------------------------- the command line
@pytest.mark.e2e
def test_a_typo_in_a_first_run_writes_nothing_and_the_fix_runs(tmp_path):
  workdir = str(tmp_path / "w")
  # A bad value (the in-process test above checks many) and an unknown key, on the command line.
  for flag, message in [("--config.task.name=nosuchtask", r"Unknown task 'nosuchtask'; known tasks"),
                        ("--config.policy.train.stepz=3", r"stepz")]:
    out = pu.run(pu.cli("tokenizer", workdir, flag), check=False)
    assert out.returncode != 0 and re.search(message, out.stderr), out.stderr[-2000:]
    assert "Traceback" not in out.stderr or "stepz" in flag
    assert not os.path.exists(workdir)
  pu.run(pu.cli("tokenizer", workdir))
  assert _entries(workdir) == ["data", "tokenizer"]


@pytest.mark.e2e
def test_missing_workdir_and_help(tmp_path):
  args = [a for a in pu.cli(None, str(tmp_path)) if not a.startswith("--workdir")]
  out = pu.run(args, check=False)
  assert out.returncode != 0 and "--workdir" in out.stderr
  out = pu.run(pu.cli(None, str(tmp_path), "--help")[:3] + ["--help"], check=False)
  text = " ".join((out.stdout + out.stderr).split())  # absl wraps long lines
  for needle in ["--workdir", "--config", "--task_module", "--[no]distributed",
                 "--config.policy.train.steps=2400", "--config.search.budgets=", "--jobs", "--mesh",
                 "prm: process reward model", "(reads mc_labels, policy)"]:
    assert needle in text, needle


@pytest.mark.e2e
def test_a_stage_records_its_decode_utilization_compiles_and_training_throughput(
    tmp_path_factory):
  """stage.json of the tiny study: the sampling stages' decode utilization (alive row-steps
  over row-steps), what each stage compiled, and the training stages' throughput."""
  base = pu.shared_study(tmp_path_factory)
  rec = lambda stage: artifacts.read_stage(os.path.join(base, stage, "latest"))  # noqa: E731
  for stage in ("difficulty", "mc_labels"):
    d = rec(stage)["decode"]
    assert 0 < d["alive_steps"] <= d["row_steps"] and d["calls"] > 0
    assert d["utilization"] == pytest.approx(d["alive_steps"] / d["row_steps"])
  for stage in ("policy", "difficulty", "prm"):
    c = rec(stage)["compile"]
    assert c["programs"] >= c["cache_hits"] >= 0 and c["compile_s"] >= 0
  (run,) = rec("policy")["train"]
  assert run["name"] == "policy" and run["steps"] > 0 and run["tokens"] > 0
  assert 0 <= run["padding_share"] < 1 and 0 < run["gflops_per_s"]
  assert run["tokens_per_s"] == pytest.approx(run["tokens"] / run["seconds"])
  assert "train" not in rec("difficulty") and "decode" not in rec("policy")


def test_retraining_the_policy_makes_new_artifacts_and_says_why(tmp_path_factory, tmp_path):
  base = pu.shared_study(tmp_path_factory)
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  old_policy = os.readlink(os.path.join(workdir, "policy", "latest"))
  old_difficulty = os.readlink(os.path.join(workdir, "difficulty", "latest"))
  # The difficulty samples read the policy (the in-process test above follows longer chains).
  # The policy is retrained with retry data in its SFT mix (issue 27: erroneous solutions in
  # the revision prompt, then the correction): the rows are in its data.
  out = pu.run(pu.cli("difficulty", workdir, overrides={"policy.retry_rate": 0.5,
                                                        "policy.retry_attempts": 1}))
  assert re.search(r"policy: differs from its latest artifact \w+ \(config.policy."
                   r"retry_attempts: '\(none\)' -> 1; config.policy.retry_rate: '\(none\)' -> "
                   r"0.5\)", out.stderr), out.stderr[-3000:]
  made = json.load(open(os.path.join(workdir, "policy", "latest", "model.json")))["made_by"]
  assert 70 < made["data"]["retry_rows"] < 130  # half of the 200 train problems
  assert "tokenizer: up to date" in out.stderr and "data: up to date" in out.stderr
  assert re.search(r"difficulty: differs from its latest artifact \w+ \(inputs.policy: ",
                   out.stderr), out.stderr[-3000:]
  new_policy = os.readlink(os.path.join(workdir, "policy", "latest"))
  assert new_policy != old_policy
  assert os.readlink(os.path.join(workdir, "difficulty", "latest")) != old_difficulty
  # The old artifacts are kept, and the old config finds them again without work.
  assert os.path.isdir(os.path.join(workdir, "policy", old_policy))
  out = pu.run(pu.cli("difficulty", workdir))
  assert "policy: up to date" in out.stderr and "difficulty: up to date" in out.stderr


@pytest.mark.e2e
def test_a_task_of_ones_own_runs_the_pipeline_with_its_own_keys(tmp_path):
  workdir = str(tmp_path / "w")
  out = pu.run(pu.cli("search_sweep,task=modsum", workdir, "--task_module=heldout_task",
                      # (searched by the policy's confidence: no MC labels nor PRM to train)
                      overrides={"task.terms": 2, "task.modulus": 5, "task.num_test": 20,
                                 "search.methods": ("best_of_n", "beam"), "search.budgets": (1, 2),
                                 "search.verifier": "conf_logprob_mean"}))
  assert "search_sweep: done" in out.stderr, out.stderr[-3000:]
  data = json.load(open(os.path.join(workdir, "data", "latest", "stage.json")))
  assert data["key"]["config"]["task"] == {"name": "modsum", "terms": 2, "modulus": 5,
                                           "num_train": 300, "num_test": 20, "seed": 0}
  cells = json.load(open(os.path.join(workdir, "search_sweep", "latest", "cells.json")))
  assert cells and all(len(c["correct"]) == 8 and c["problems"][0].startswith("modsum/")
                       for c in cells)
  # Without the module the task is unknown, with a clear error.
  out = pu.run(pu.cli("tokenizer,task=modsum", str(tmp_path / "x")), check=False)
  assert out.returncode != 0 and "Unknown task 'modsum'" in out.stderr


def test_the_paper_scale_config_is_the_study_at_500_problems():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "paper_scale", os.path.join(pu.REPO, "experiments", "arith_paper_scale.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("prm")
  assert c.stage == "prm" and c.test_problems == 500 and len(c.search.seeds) >= 3
  # The paper's PRM data: 16 samples per problem x 16 rollouts per step prefix.
  assert c.mc_labels.samples_per_problem == 16 and c.mc_labels.rollouts == 16
  assert c.prm.holdout == 0.1  # and its early stopping on held-out train questions
  config_lib.validate(c, list(STAGES), CHECKS)
  assert len(sweep(c.search)) > len(sweep(pu.arith.get_config().search))


def test_the_sweep_gives_beam_searches_the_config_s_process_advantage():
  search = pu.arith.get_config().search
  search.methods = ("best_of_n", "beam", "beam_sqrt", "dvts", "particles", "lookahead")
  assert all(getattr(c.strategy, "advantage", 0.0) == 0.0 for c in sweep(search))
  search.advantage = 0.5
  beams = [c for c in sweep(search) if type(c.strategy).__name__ == "BeamSearch"]
  assert {c.method.split("_")[0] for c in beams} >= {"beam", "lookahead"}
  assert all(c.strategy.advantage == 0.5 for c in beams)


# -------------------------------------------------------------------- stage processes
def test_the_longest_chain_starts_first():
  from ttc_jax.pipeline import jobs
  p = Pipeline(pu.tiny_config(), "/x")
  deps = {n: [s for s in p.inputs_of(n).values() if s] for n in p.plan("study")}
  cost = lambda name: jobs.path_cost(deps, name, "report")
  assert cost("prm") > cost("orm") and cost("search_sweep") > cost("verifier_eval")
  assert cost("policy") == max(cost(s) for s in deps if s not in ("data", "tokenizer"))
  # A stage that does not lead to the target costs only itself.
  assert jobs.path_cost(deps, "orm", "search_sweep") == STAGES["orm"].cost_s


@pytest.mark.e2e
def test_stage_processes_run_side_by_side_and_rerun_the_same(tmp_path_factory, tmp_path):
  base = pu.shared_study(tmp_path_factory)
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  for stage in ("prm", "orm", "verifier_eval"):
    for d in os.listdir(os.path.join(workdir, stage)):
      if d != "latest":
        shutil.rmtree(os.path.join(workdir, stage, d))
  out = pu.run(pu.cli("verifier_eval", workdir, "--jobs=2"))
  # Independent stages start beside each other; each logs under its own name.
  assert re.search(r"(prm|orm): started in process \d+ \(beside (orm|prm)\)", out.stderr)
  assert re.search(r"\[verifier_eval\] .*verifiers: pass@1", out.stderr), out.stderr[-3000:]
  for stage in ("prm", "orm", "verifier_eval"):
    assert (os.readlink(os.path.join(workdir, stage, "latest"))
            == os.readlink(os.path.join(base, stage, "latest"))), stage
  # The same artifacts as one process (--jobs=1) made, to the bit (issue 24, item 14): every
  # stage process trains on one XLA CPU device per core, as a --jobs=1 run does.
  import jax
  from flax import nnx
  from ttc_jax.pipeline import artifacts
  for stage in ("prm", "orm"):
    params = [jax.tree.leaves(nnx.state(artifacts.load_model(
        os.path.join(w, stage, "latest")).model, nnx.Param)) for w in (base, workdir)]
    for a, b in zip(*params):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=stage)
  ref = np.load(os.path.join(base, "verifier_eval", "latest", "scored.npz"))
  got = np.load(os.path.join(workdir, "verifier_eval", "latest", "scored.npz"))
  assert sorted(ref.files) == sorted(got.files)
  for name in ref.files:
    np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
  ref = json.load(open(os.path.join(base, "verifier_eval", "latest", "eval.json")))
  got = json.load(open(os.path.join(workdir, "verifier_eval", "latest", "eval.json")))
  assert got == ref


@pytest.mark.e2e
def test_a_failing_stage_process_stops_the_run_with_one_line(tmp_path_factory, tmp_path):
  base = pu.shared_study(tmp_path_factory)
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  shutil.rmtree(os.path.realpath(os.path.join(workdir, "verifier_eval", "latest")))
  os.remove(os.path.join(workdir, "difficulty", "latest", "samples.npz"))
  out = pu.run(pu.cli("verifier_eval", workdir, "--jobs=2"), check=False)
  assert out.returncode == 1
  assert re.search(r"StageFailed: stage 'verifier_eval' failed in process \d+", out.stderr)


@pytest.mark.e2e
def test_early_stopping_holds_out_whole_questions_and_keeps_the_best_checkpoint(
    tmp_path_factory, tmp_path):
  """prm.holdout: a share of the MC-labelled questions is held out (all of a question's
  samples, by a draw of its own); the PRM trains on the others and is the checkpoint with the
  lowest loss on the held-out samples."""
  import jax
  from flax import nnx
  from ttc_jax.pipeline.stages import verifiers as verifier_stages
  base = pu.shared_study(tmp_path_factory)
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  # Candidates every 2 steps of 6 (checkpoints every 3: the trainer keeps one at every 1).
  pipe = Pipeline(pu.tiny_config(prm__holdout=0.3, prm__holdout_every=2,
                                 prm__train__bucket_pool_batches=0), workdir)
  prm, ls = pipe.run("prm"), pipe.load("mc_labels")
  made = prm.description["made_by"]
  stop = made["early_stopping"]
  held = verifier_stages.held_out_questions(ls.problem_index, 0.3, made["train"]["seed"])
  assert 0 < held.sum() < len(held)
  for q in np.unique(ls.problem_index):  # a question is held out whole
    assert len(set(held[ls.problem_index == q])) == 1
  assert stop["held_samples"] == int(held.sum())
  assert made["data"]["samples"] == len(ls)  # of which the held-out ones were not trained on
  # One question's draw does not depend on the others present.
  some = ls.problem_index[ls.problem_index != ls.problem_index[0]]
  np.testing.assert_array_equal(verifier_stages.held_out_questions(some, 0.3, 0),
                                held[ls.problem_index != ls.problem_index[0]])
  assert [r["step"] for r in stop["curve"]] == [2, 4, 6]
  best = min(stop["curve"], key=lambda r: (r["loss"], r["step"]))
  assert stop["step"] == best["step"]
  # The artifact is that checkpoint.
  ckpt = os.path.join(prm.path, "checkpoints")
  chosen = checkpoints.restore_params(ckpt, checkpoints.abstract_model(prm.config),
                                      step=stop["step"], any_step=True)
  for a, b in zip(jax.tree.leaves(nnx.state(chosen, nnx.Param)),
                  jax.tree.leaves(nnx.state(prm.model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # At 0 (the default) the PRM is the shared study's, untouched.
  assert Pipeline(pu.tiny_config(), workdir).identity("prm") == os.path.basename(
      os.readlink(os.path.join(base, "prm", "latest")))
  with pytest.raises(ConfigError, match=r"prm.holdout=0.9"):
    Pipeline(pu.tiny_config(prm__holdout=0.9), workdir).validate("prm")
