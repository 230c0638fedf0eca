"""experiments/math_qwen.py end to end on CPU: tiny random checkpoints of its architectures
(a Qwen2 causal LM with a ChatML template as the policy; a Qwen2 backbone with a 2-label
step head, Qwen2.5-Math-PRM's layout, as the PRM) and the first MATH-500 problems.

The models are random, so every answer is wrong: the test checks that each stage runs and
wires what it should (chat prompts, the PRM's own format and tokens, the budget, the
reports), not accuracies.
"""

import glob
import importlib.util
import json
import os

import ml_collections
import numpy as np
import pytest
import transformers

from hf_fixtures import write_math_smoke
from ttc_jax.pipeline import Pipeline
from ttc_jax.pipeline import config as config_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHARED = os.path.join(ROOT, "..", "shared", "data")

pytestmark = pytest.mark.e2e


def _load_experiment():
  spec = importlib.util.spec_from_file_location(
      "math_qwen", os.path.join(ROOT, "experiments", "math_qwen.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  return write_math_smoke(str(tmp_path_factory.mktemp("math_ckpts")), SHARED)


def smoke_config(checkpoints, stage: str = "study") -> ml_collections.ConfigDict:
  """The experiment's own smoke preset (``:smoke``) on the tiny checkpoints."""
  c = _load_experiment().get_config(f"{stage},smoke")
  return _paths(c, checkpoints)


def _paths(c, checkpoints):
  c.task.data_dir = checkpoints["data"]
  c.hf_policy.path = checkpoints["policy"]
  c.hf_prm.path = checkpoints["prm"]
  return c


@pytest.fixture(scope="module")
def study(checkpoints, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("math_study"))
  pipeline = Pipeline(smoke_config(checkpoints), workdir)
  pipeline.run("study")
  return pipeline, workdir


def _read(workdir, stage, name):
  with open(os.path.join(workdir, stage, "latest", name)) as f:
    return json.load(f) if name.endswith(".json") else f.read()


def test_the_study_runs_end_to_end(study):
  pipeline, workdir = study
  ran = sorted(os.path.basename(os.path.dirname(p))
               for p in glob.glob(os.path.join(workdir, "*", "latest")))
  assert ran == sorted(["data", "hf_policy", "hf_prm", "difficulty", "verifier_eval",
                        "search_sweep", "report", "compute_optimal", "study"])
  study_md = _read(workdir, "study", "study.md")
  assert "not in this experiment" in study_md  # no revision model
  for name in ("report.md", "accuracy_vs_budget.png", "verifiers.png"):
    assert os.path.exists(os.path.join(workdir, "report", "latest", name))
  report = _read(workdir, "report", "results.json")
  assert set(report["models"]) == {"policy", "prm"}
  assert report["models"]["prm"]["prm_format"] == "qwen2.5-math-prm"
  assert os.path.exists(os.path.join(workdir, "compute_optimal", "latest", "compute_optimal.md"))


def test_search_cells_count_the_prm_tokens(study):
  pipeline, workdir = study
  cells = _read(workdir, "search_sweep", "cells.json")
  methods = {c["method"] for c in cells}
  assert methods == {"best_of_n_weighted", "beam_m2", "dvts_m2", "particles"}
  uids = [p.uid for p in pipeline.load("data").problems("test", 4)]
  for cell in cells:
    assert cell["problems"] == uids
    assert all(t > 0 for t in cell["policy_tokens"])
    # The PRM reads its own chat-formatted text: more tokens than the policy's steps alone.
    assert all(p > 0 for p in cell["prm_tokens"]), cell["key"]
    assert all(f > pf for f, pf in zip(cell["flops"], cell["policy_flops"]))


def test_policy_prompts_are_the_chat_template_s(study, checkpoints):
  pipeline, _ = study
  policy, data = pipeline.load("hf_policy"), pipeline.load("data")
  problem = data.problems("test", 1)[0]
  ref = transformers.PreTrainedTokenizerFast.from_pretrained(checkpoints["policy"])
  messages = [{"role": "system", "content": _load_experiment().QWEN_MATH_SYSTEM},
              {"role": "user", "content": problem.question.strip()}]
  want = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                 return_dict=False)
  got = policy.tokenizer.encode_prompt(data.task.format_prompt(problem))
  assert got == list(want)
  difficulty = pipeline.load("difficulty")
  assert difficulty.gens.tokens.shape[0] == 4 * 4


def test_verifier_eval_scores_with_the_adapted_prm(study):
  pipeline, workdir = study
  ev = _read(workdir, "verifier_eval", "eval.json")
  assert "orm/weighted" not in ev["curves"] and "prm_last/weighted" in ev["curves"]
  scored = pipeline.load("verifier_eval")["scored"]
  s = np.asarray(scored["prm_last"])
  assert s.shape == (16,) and np.all((s >= 0) & (s <= 1))
  assert ev["auc"]["num_steps"] > 0  # MC labels of a held-out problem, PRM-scored


def test_a_changed_checkpoint_is_a_new_artifact(checkpoints, tmp_path):
  c = smoke_config(checkpoints)
  workdir = str(tmp_path / "w")
  before = Pipeline(c, workdir)
  ids = {s: before.identity(s) for s in ("hf_policy", "difficulty", "search_sweep")}
  copy = str(tmp_path / "policy")
  os.makedirs(copy)
  for name in os.listdir(checkpoints["policy"]):
    with open(os.path.join(checkpoints["policy"], name), "rb") as f:
      blob = f.read()
    with open(os.path.join(copy, name), "wb") as f:
      f.write(blob)
  c.hf_policy.path = copy
  moved = Pipeline(c, workdir)
  assert moved.identity("hf_policy") != ids["hf_policy"]  # the path is part of the config
  with open(os.path.join(copy, "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": [2]}, f)
  changed = Pipeline(c, workdir)
  for stage, old in ids.items():
    assert changed.identity(stage) not in (old, moved.identity(stage)), stage


def test_roles_are_checked(checkpoints, tmp_path):
  c = smoke_config(checkpoints)
  c.stages.policy = None
  with pytest.raises(config_lib.ConfigError, match=r"stages.policy=None: stage 'difficulty' "
                                                   r"needs a 'policy'"):
    Pipeline(c, str(tmp_path)).validate()
  c = smoke_config(checkpoints)
  c.stages.prm = None  # allowed, but then nothing may need the PRM
  with pytest.raises(config_lib.ConfigError, match=r"search.verifier='prm': this experiment "
                                                   r"leaves the prm stage out"):
    Pipeline(c, str(tmp_path)).validate()
  c = smoke_config(checkpoints)
  c.stages.policy = "hf_prm"
  with pytest.raises(config_lib.ConfigError, match=r"stages.policy='hf_prm': expected a stage "
                                                   r"that fills the role 'policy'"):
    Pipeline(c, str(tmp_path)).validate()
  c = smoke_config(checkpoints)
  c.hf_prm.format = "math-shepherd"  # reads an LM head; this checkpoint has a classifier
  with pytest.raises(config_lib.ConfigError, match=r"hf_prm.format='math-shepherd' reads a "
                                                   r"'lm' head"):
    Pipeline(c, str(tmp_path)).validate()
  c = smoke_config(checkpoints)
  c.hf_prm.max_seq_len = 4096  # past the checkpoint's max_position_embeddings (1024)
  with pytest.raises(config_lib.ConfigError, match=r"hf_prm.max_seq_len=4096: expected an "
                                                   r"integer \[2, 1024\]"):
    Pipeline(c, str(tmp_path)).validate()
  c = smoke_config(checkpoints)
  c.hf_policy.path = str(tmp_path / "missing")
  with pytest.raises(config_lib.ConfigError, match=r"hf_policy.path=.*missing"):
    Pipeline(c, str(tmp_path)).validate()
  assert not os.listdir(tmp_path)  # nothing written


def test_gsm8k_is_the_same_study_on_another_task(checkpoints, tmp_path):
  c = _paths(_load_experiment().get_config("search_sweep,task=gsm8k,smoke"), checkpoints)
  p = Pipeline(c, str(tmp_path))
  p.validate()
  assert p.task.name == "gsm8k" and c.stage == "search_sweep"
  assert p.plan("search_sweep") == ["data", "hf_policy", "hf_prm", "search_sweep"]
  with pytest.raises(ValueError, match=r"task='x': expected 'math' or 'gsm8k'"):
    _load_experiment().get_config("task=x")


def test_a_tensor_parallel_mesh_gives_the_same_study(study, checkpoints, tmp_path):
  """The same config on a data=2 x model=4 mesh of fake CPU devices (checkpoints loaded
  straight onto it): the same samples, search answers and budgets as on one device."""
  import jax  # pylint: disable=g-import-not-at-top
  from ttc_jax import parallel  # pylint: disable=g-import-not-at-top
  if jax.local_device_count() < 8:
    pytest.skip("needs the 8 fake CPU devices of make test (XLA_FLAGS)")
  pipeline, workdir = study
  c = smoke_config(checkpoints, "search_sweep")
  c.search.methods = ("best_of_n", "beam")
  parallel.set_sampling_mesh(2, 4)
  try:
    tp = Pipeline(c, str(tmp_path))
    tp.run("search_sweep")
    tp.run("difficulty")
    policy = tp.load("hf_policy")
    leaf = policy.model.embed[...]
    assert len(leaf.sharding.device_set) == 8
  finally:
    parallel.set_sampling_mesh(1, 1)
  one, two = pipeline.load("difficulty"), tp.load("difficulty")
  np.testing.assert_array_equal(two.gens.tokens, one.gens.tokens)
  ref = {c.key: c for c in pipeline.load("search_sweep")}
  for cell in tp.load("search_sweep"):
    want = ref[cell.key]
    for field in ("answer", "correct", "policy_tokens", "prm_tokens", "finished"):
      assert cell.column(field).tolist() == want.column(field).tolist(), (cell.key, field)


def test_a_left_out_target_and_unknown_roles_are_named(checkpoints, tmp_path):
  c = smoke_config(checkpoints, "revision_report")
  with pytest.raises(config_lib.ConfigError, match=r"stage 'revision_report': this experiment "
                                                   r"leaves it out"):
    Pipeline(c, str(tmp_path)).run()
  c = smoke_config(checkpoints)
  with pytest.raises(config_lib.ConfigError, match=r"stages.ormm: not a role any stage reads"):
    c.stages.ormm = None
    Pipeline(c, str(tmp_path)).validate()
  assert not os.listdir(tmp_path)


def test_an_imported_model_reads_its_weights_on_first_use(study, checkpoints):
  """Stages that need only an imported model's architecture or tokenizer (the report, the
  prediction cost) never read its weights; the first sampling or scoring does."""
  pipeline, _ = study
  fresh = Pipeline(smoke_config(checkpoints), pipeline.workdir)
  prm = fresh.load("hf_prm")
  assert prm._model is None  # pylint: disable=protected-access
  assert prm.summary()["params"] == prm.config.num_params() and prm.config.head == "classifier"
  assert prm.model.config == prm.config and prm._model is not None  # pylint: disable=protected-access


def test_a_tokenizer_that_writes_the_delimiter_as_two_tokens_is_accepted(checkpoints,
                                                                        tmp_path):
  """Issue 24, item 15: config validation refused tokenizers with no token holding "\n\n"
  ("steps would never end") although the sampling core stops on a delimiter split over two
  tokens (step_pairs)."""
  import shutil
  from hf_fixtures import CHATML
  from hf_fixtures import write_tokenizer
  from ttc_jax.tokenizers.hf import HFTokenizer
  from ttc_jax.sampling.solutions import step_ends
  policy = str(tmp_path / "policy")
  shutil.copytree(checkpoints["policy"], policy)
  write_tokenizer(policy, template=CHATML, generation_eos=[2, 0], split_newlines=True,
                  config_extra={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
  tok = HFTokenizer.load(policy)
  assert not tok.step_ids and tok.step_pairs
  ids = tok.encode("Let x = 3.\n\nThen 2x = 6.\n\nThe answer is 6.")
  ends = step_ends(ids, tok.step_ids, tok.eos_ids, tok.step_pairs)
  assert [tok.decode(ids[:e + 1]).endswith("\n\n") for e in ends[:2]] == [True, True]
  c = smoke_config(checkpoints, "difficulty")
  c.hf_policy.path = policy
  Pipeline(c, str(tmp_path / "w")).validate()


def test_without_a_prm_the_study_searches_by_the_policy_s_confidence(checkpoints, tmp_path):
  """stages.prm=None: search scores steps by the policy's confidence and difficulty is predicted
  from it; no PRM is imported or read, and every search cell costs the policy's tokens only."""
  c = smoke_config(checkpoints)
  c.stages.prm = None
  c.hf_prm.path = str(tmp_path / "no_such_checkpoint")  # never read
  c.search.verifier = "conf_logprob_mean"
  c.compute_optimal.predictor = "policy_likelihood"
  workdir = str(tmp_path / "w")
  Pipeline(c, workdir).run("study")
  ran = sorted(os.path.basename(os.path.dirname(p))
               for p in glob.glob(os.path.join(workdir, "*", "latest")))
  assert ran == sorted(["data", "hf_policy", "difficulty", "verifier_eval", "search_sweep",
                        "report", "compute_optimal", "study"])
  for cell in _read(workdir, "search_sweep", "cells.json"):
    assert sum(cell["prm_tokens"]) == 0 and cell["flops"] == cell["policy_flops"]
    assert all(t > 0 for t in cell["policy_tokens"])
  assert set(_read(workdir, "report", "results.json")["models"]) == {"policy"}
  ev = _read(workdir, "verifier_eval", "eval.json")
  assert "conf_logprob_mean" in ev["within_problem"] and "prm_last" not in ev["within_problem"]
  # A PRM left out cannot be the search verifier or the difficulty predictor: named up front.
  for key, value in (("search.verifier", "prm"), ("compute_optimal.predictor", "prm_last")):
    bad = smoke_config(checkpoints)
    bad.stages.prm = None
    bad.search.verifier, bad.compute_optimal.predictor = "conf_logprob_mean", "policy_likelihood"
    node, leaf = key.split(".")
    bad[node][leaf] = value
    with pytest.raises(config_lib.ConfigError, match=rf"{key}='{value}': this experiment leaves "
                                                     r"the prm stage out \(stages.prm=None\)"):
      Pipeline(bad, str(tmp_path / "bad")).run("study")


def test_the_prm_and_the_policy_s_confidence_search_together_when_asked(checkpoints, tmp_path):
  """stages.verifier_choice on, search.verifier='ens_prm': the search sweep reads the imported
  PRM and the verifier choice (its ensemble's weights, fitted on MATH train problems); without
  the choice the ensemble is named as unavailable before anything runs."""
  c = smoke_config(checkpoints)
  c.stages.verifier_choice = "verifier_choice"
  c.search.verifier = "ens_prm"
  pipeline = Pipeline(c, str(tmp_path / "w"))
  pipeline.validate()
  assert {"hf_prm", "verifier_choice"} <= set(pipeline.plan("search_sweep"))
  assert pipeline.inputs_of("search_sweep")["verifier_choice"] == "verifier_choice"
  assert c.verifier_choice.first_problem == 0  # MATH train problems, never a test problem
  bad = smoke_config(checkpoints)
  bad.search.verifier = "ens_prm"
  with pytest.raises(config_lib.ConfigError, match=r"search.verifier='ens_prm': an ensemble is "
                                                   r"fitted by the verifier choice, which this "
                                                   r"experiment leaves out"):
    Pipeline(bad, str(tmp_path / "bad")).run("study")
  assert not os.path.exists(tmp_path / "bad")
