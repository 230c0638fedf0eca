"""PRM adapters: each public PRM's recipe, computed with transformers on a tiny random
checkpoint of its architecture, against ttc_jax's full and incremental scoring.

* Math-Shepherd (Mistral LM): ``f"{question} {steps joined by ' ки\\n'} ки"`` after BOS
  (Mistral's ``tokenizer.encode`` adds it); the softmax of the "+" / "-" logits at every
  " ки" token, "+" kept (its model card's code).
* RLHFlow (Llama 3.1 LM, chat): step k scored by rendering the conversation of the first
  k steps, each a user turn answered "+", and reading "+" vs "-" three tokens from the end
  (before "+<|eot_id|>"), as its model card does.
* Qwen2.5-Math-PRM (Qwen2 backbone + 2-label head): the steps joined by "<extra_0>" in one
  assistant turn after the system and user turns; the softmax of the head at every
  "<extra_0>", label 1 kept.
"""

import dataclasses

import numpy as np
import pytest
import torch
import transformers

from conftest import assert_close
from hf_fixtures import CHATML
from hf_fixtures import LLAMA3
from hf_fixtures import SPECIAL
from hf_fixtures import randomize
from hf_fixtures import write_step_classifier
from hf_fixtures import write_tokenizer
from ttc_jax.tokenizers.hf import HFTokenizer
from ttc_jax.models import hf_import
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.verifiers import adapters

V = 320
_COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               bos_token_id=3, eos_token_id=0, pad_token_id=0)
TAGS = [" ки", "<extra_0>"]
SOLUTIONS = [
    ("What is 12 + 30?", ["First, add the numbers.", "Second: 12 + 30 = 42.",
                          "So the answer is 42."]),
    ("Let x = 3. What is 2x?", ["Then 2x = 6.", "The answer is $\\boxed{6}$."]),
    ("What is 1/2 + 1/3?", ["We have $\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}$."]),
]


def _hf_tokenizer(directory):
  return transformers.PreTrainedTokenizerFast.from_pretrained(directory)


def _reference_math_shepherd(ref, tok, question, steps):
  ids = [tok.bos_token_id] + tok.encode(f"{question} " + "\n".join(s + " ки" for s in steps),
                                        add_special_tokens=False)
  pair = [tok.convert_tokens_to_ids(t) for t in ("+", "-")]
  with torch.no_grad():
    logits = ref(torch.tensor([ids])).logits[0][:, pair]
  probs = logits.softmax(-1)[:, 0].numpy()
  return probs[np.array(ids) == tok.convert_tokens_to_ids(" ки")]


def _reference_rlhflow(ref, tok, question, steps):
  pair = [tok.convert_tokens_to_ids(t) for t in ("+", "-")]
  out, chat = [], []
  for k, step in enumerate(steps):
    chat += [{"role": "user", "content": f"{question} {step}" if k == 0 else step},
             {"role": "assistant", "content": "+"}]
    ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=False)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    with torch.no_grad():
      logits = ref(torch.tensor([ids])).logits[0, -3, pair]
    out.append(float(logits.softmax(-1)[0]))
  return np.array(out)


def _reference_qwen_prm(ref, tok, question, steps):
  backbone, score = ref
  chat = [{"role": "system", "content": adapters.QWEN_PRM.system},
          {"role": "user", "content": question},
          {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
  text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
  ids = tok.encode(text, add_special_tokens=False)
  with torch.no_grad():
    probs = score(backbone(input_ids=torch.tensor([ids])).last_hidden_state)[0].softmax(-1)
  return probs[:, 1].numpy()[np.array(ids) == tok.convert_tokens_to_ids("<extra_0>")]


@pytest.fixture(scope="module", params=["math-shepherd", "rlhflow", "qwen2.5-math-prm"])
def prm(request, tmp_path_factory):
  """(format, our AdaptedPRM, reference scorer(question, steps) -> per-step scores)."""
  name = request.param
  d = str(tmp_path_factory.mktemp(name))
  special = SPECIAL + TAGS
  if name == "math-shepherd":
    write_tokenizer(d, template=None, special=special, generation_eos=[0],
                    config_extra={"eos_token": "<|endoftext|>", "bos_token": "<|begin_of_text|>"})
    ref = transformers.MistralForCausalLM(transformers.MistralConfig(
        **_COMMON, sliding_window=None, tie_word_embeddings=False)).eval()
    randomize(ref, seed=30)
    ref.save_pretrained(d)
    reference = _reference_math_shepherd
  elif name == "rlhflow":
    write_tokenizer(d, template=LLAMA3, special=special, generation_eos=[0, 6],
                    config_extra={"bos_token": "<|begin_of_text|>", "eos_token": "<|endoftext|>"})
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **_COMMON, tie_word_embeddings=False)).eval()
    randomize(ref, seed=31)
    ref.save_pretrained(d)
    reference = _reference_rlhflow
  else:
    write_tokenizer(d, template=CHATML, special=special, generation_eos=[2, 0],
                    config_extra={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    ref = write_step_classifier(d, transformers.Qwen2Config(**_COMMON), seed=32)
    reference = _reference_qwen_prm
  model = hf_import.load(d, param_dtype="float32")
  fmt = adapters.FORMATS[name]
  ours = adapters.AdaptedPRM(model, HFTokenizer.load(d), fmt)
  tok = _hf_tokenizer(d)
  return name, ours, lambda question, steps: reference(ref, tok, question, steps)


def test_full_scores_match_the_reference(prm):
  name, ours, reference = prm
  got = ours.full_scores(SOLUTIONS)
  for (question, steps), scores in zip(SOLUTIONS, got):
    want = reference(question, steps)
    assert want.shape == scores.shape == (len(steps),), name
    assert want.std() > 1e-3 or len(steps) == 1  # the steps' scores differ: positions matter
    assert_close(scores, want, err_msg=name)


def test_incremental_scores_match_the_reference(prm):
  """One chunk per step on the PRM's KV cache; rows that add no step keep their score."""
  name, ours, reference = prm
  state = ours.start([q for q, _ in SOLUTIONS], cache_size=200)
  steps_seen = [[] for _ in SOLUTIONS]
  for k in range(max(len(s) for _, s in SOLUTIONS)):
    new = [steps[k] if k < len(steps) else None for _, steps in SOLUTIONS]
    state, scores = ours.step(state, new)
    for i, (question, steps) in enumerate(SOLUTIONS):
      if new[i] is not None:
        steps_seen[i].append(new[i])
      want = reference(question, steps_seen[i])[-1]
      assert_close(np.array([scores[i]]), np.array([want]), err_msg=f"{name} row {i} step {k}")


def test_a_solution_scores_the_same_alone_and_batched(prm):
  _, ours, _ = prm
  batched = ours.full_scores(SOLUTIONS)
  for sol, scores in zip(SOLUTIONS, batched):
    assert_close(ours.full_scores([sol])[0], scores)


def test_format_errors_are_named(prm):
  name, ours, _ = prm
  with pytest.raises(adapters.FormatError, match="at least one step"):
    ours.full_scores([("q", [])])
  # Past the PRM's context (256): named, in a full pass and step by step, nothing fed.
  long_step = "12 + 30 = 42. " * 60
  with pytest.raises(adapters.FormatError, match=r"PRM tokens; the PRM's context is 256"):
    ours.full_scores([("q", [long_step])])
  state = ours.start(["q", "q"], cache_size=300)
  with pytest.raises(adapters.FormatError, match=r"row 1 is \d+ PRM tokens after step 1; the "
                                                 r"PRM's context is 256"):
    ours.step(state, ["Then 2x = 6.", long_step])
  assert state.steps == [[], []]
  if name == "qwen2.5-math-prm":
    with pytest.raises(adapters.FormatError, match=r"reads a 'lm' head; the model has 'classifier'"):
      adapters.AdaptedPRM(ours.model, ours.tokenizer, adapters.MATH_SHEPHERD)


def test_the_value_format_reads_what_the_search_scorer_reads(tmp_path):
  """ttc_jax's own value-head PRM behind the adapter: the same scores as the
  IncrementalScorer the search uses, fed the same tokens one step at a time."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ttc_jax.models.transformer import Transformer
  from ttc_jax.models.transformer import TransformerConfig
  from ttc_jax.verifiers.incremental import IncrementalScorer
  write_tokenizer(str(tmp_path), template=None, generation_eos=[0],
                  config_extra={"eos_token": "<|endoftext|>"})
  tok = HFTokenizer.load(str(tmp_path))
  model = Transformer(TransformerConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                                        mlp_dim=64, max_seq_len=256, head="value",
                                        init_std=0.3), rngs=nnx.Rngs(3))
  ours = adapters.AdaptedPRM(model, tok, adapters.VALUE_AT_STEP_ENDS)
  scorer = IncrementalScorer(model, pad_id=tok.pad_id)
  question, steps = SOLUTIONS[0]
  ids, ends = ours.encode(question, steps)
  starts = [0] + [e + 1 for e in ends[:-1]]
  state = scorer.prefill(np.array([ids[:ends[0] + 1]]), cache_size=200)
  want = [scorer.scores(state)[0]]
  for s, e in zip(starts[1:], ends[1:]):
    state = scorer.extend(state, np.array([ids[s:e + 1]]))
    want.append(scorer.scores(state)[0])
  assert_close(ours.full_scores([(question, steps)])[0], np.array(want))
  assert tok.decode(ids) == question + "\n\n" + "\n\n".join(steps)


# ------------------------------------------------------------------ search through an adapter
@pytest.fixture(scope="module")
def bridged(core1, special_ids, tmp_path_factory):
  """A search context whose PRM is a Qwen2.5-Math-PRM-layout checkpoint with its own
  tokenizer and format, fed the test policy's steps as text."""
  from search_fixtures import Task
  from search_fixtures import Tok
  from ttc_jax.search import SearchContext
  d = str(tmp_path_factory.mktemp("bridge_prm"))
  write_tokenizer(d, template=CHATML, special=SPECIAL + TAGS, generation_eos=[2, 0],
                  config_extra={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
  write_step_classifier(d, transformers.Qwen2Config(**_COMMON), seed=33)
  prm = adapters.AdaptedPRM(hf_import.load(d, param_dtype="float32"), HFTokenizer.load(d),
                            adapters.QWEN_PRM)
  tok = Tok(special_ids.eos_ids[0], special_ids.step_ids[0])
  ctx = SearchContext(core=core1, prm=adapters.PolicyBridge(prm, tok), task=Task(),
                      tokenizer=tok, seed=3, run=0,
                      sp=SamplingParams(temperature=1.0, max_new_tokens=40),
                      max_step_tokens=40)  # no step is cut: the PRM's steps end at delimiters
  return ctx, prm


def _steps(ctx, tokens):
  from ttc_jax.sampling.solutions import step_ends
  ends = step_ends(tokens, ctx.tokenizer.step_ids, ctx.tokenizer.eos_ids)
  texts = [ctx.prm._step_text(tokens[a:e + 1])  # pylint: disable=protected-access
           for a, e in zip([0] + [e + 1 for e in ends[:-1]], ends)]
  return [t for t in texts if t is not None]


@pytest.mark.parametrize("strategy", ["best_of_n", "beam", "beam_cut_steps"])
def test_search_through_an_adapted_prm(bridged, strategy, monkeypatch):
  """Best-of-N and beam search score the policy's steps with the adapted PRM: every
  candidate's score is the PRM's score of its last step read from the whole solution, and
  the budget counts the PRM's own tokens (its prompt is the question in its chat format).
  With a step cap of 3 tokens (beam_cut_steps) most steps are cut and continued: the PRM
  still sees the policy's steps whole."""
  from search_fixtures import PROBLEMS
  from ttc_jax.search import BeamSearch
  from ttc_jax.search import BestOfN
  ctx, prm = bridged
  if strategy == "beam_cut_steps":
    ctx = dataclasses.replace(ctx, max_step_tokens=3)
  continued, step = [], prm.step
  monkeypatch.setattr(prm, "step", lambda state, steps, continues=None: (
      continued.append(any(continues or ())), step(state, steps, continues))[1])
  search = BestOfN(n=4) if strategy == "best_of_n" else BeamSearch(n=4, width=2,
                                                                   max_rounds=40)
  results = search.run(ctx, PROBLEMS[:2])
  assert any(continued) == (strategy == "beam_cut_steps")
  checked = 0
  for problem, res in zip(PROBLEMS[:2], results):
    for c in res.candidates:
      steps = _steps(ctx, c.tokens)
      if not steps:
        continue
      full = prm.full_scores([(problem.question, steps)])[0]
      assert_close(np.array([c.score]), full[-1:], err_msg=f"{strategy} {c.tokens}")
      checked += 1
    if strategy == "best_of_n":  # the prompt once (but its last token, fed with each
      # sample's first step), then each sample's own PRM tokens
      head = len(prm.tokenizer.encode(prm.format.head(prm.tokenizer, problem.question))) - 1
      want = head + sum(len(prm.encode(problem.question, _steps(ctx, c.tokens))[0]) - head
                        for c in res.candidates if _steps(ctx, c.tokens))
      assert res.budget.prm_tokens == want
  assert checked >= 2


def test_a_space_before_the_first_step_may_merge_with_it(tmp_path):
  """With GPT-2's pre-tokenizer "question " ends in a lone space token but "question
  First" encodes " First": the head's last token is fed with the first step, so
  incremental scoring still equals the full pass (Math-Shepherd's plain layout, whose
  head ends in the question separator)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ttc_jax.models.transformer import Transformer
  from ttc_jax.models.transformer import TransformerConfig
  d = str(tmp_path / "regex")
  write_tokenizer(d, template=None, special=SPECIAL + TAGS, generation_eos=[0], use_regex=True,
                  config_extra={"eos_token": "<|endoftext|>", "bos_token": "<|begin_of_text|>"})
  model = Transformer(TransformerConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                                        mlp_dim=64, max_seq_len=256, init_std=0.3),
                      rngs=nnx.Rngs(5))
  regex = adapters.AdaptedPRM(model, HFTokenizer.load(d), adapters.MATH_SHEPHERD)
  # " answer" is a word of the tokenizer's corpus: "question " + "answer" merges the space.
  question, steps = "What is 12 + 30?", ["answer is 42.", "So the answer is 42."]
  head = regex.tokenizer.encode(adapters.MATH_SHEPHERD.head(regex.tokenizer, question), bos=True)
  first = regex.encode(question, steps[:1])[0]
  assert first[:len(head)] != head  # the boundary really merges
  state = regex.start([question], cache_size=200)
  got = [regex.step(state, [s])[1][0] for s in steps]
  assert_close(np.array(got), regex.full_scores([(question, steps)])[0])


def test_a_step_boundary_the_tokenizer_merges_is_rescored_in_full(tmp_path):
  """With no tag between steps, "...the answ" + "er is 42." encodes "answer" as one token:
  the text's tokens no longer extend those in the cache. That row is re-scored in full (its
  cache emptied, its whole text fed again; the other row keeps its cache), and the scores
  still equal full passes; the budget's PRM tokens count the re-fed text."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ttc_jax.models.transformer import Transformer
  from ttc_jax.models.transformer import TransformerConfig
  d = str(tmp_path / "merge")
  write_tokenizer(d, template=None, special=SPECIAL + TAGS, generation_eos=[0],
                  config_extra={"eos_token": "<|endoftext|>", "bos_token": "<|begin_of_text|>"})
  model = Transformer(TransformerConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                                        mlp_dim=64, max_seq_len=256, init_std=0.3),
                      rngs=nnx.Rngs(6))
  fmt = dataclasses.replace(adapters.MATH_SHEPHERD, name="untagged", tag="", step_sep="")
  prm = adapters.AdaptedPRM(model, HFTokenizer.load(d), fmt)
  question = "What is 12 + 30?"
  merging, plain = ["So the answ", "er is 42."], ["Then 2x = 6.", " The answer is 42."]
  ids0 = prm.encode(question, merging[:1])[0]
  ids1 = prm.encode(question, merging)[0]
  assert ids1[:len(ids0)] != ids0  # the boundary really merges
  assert prm.encode(question, plain)[0][:len(prm.encode(question, plain[:1])[0])] == \
      prm.encode(question, plain[:1])[0]  # and this one does not
  state = prm.start([question, question], cache_size=40)  # small: the re-score grows it
  got, consumed = [], [state.consumed.copy()]
  for k in range(2):
    state, last = prm.step(state, [merging[k], plain[k]])
    got.append(last.copy())
    consumed.append(state.consumed.copy())
  assert state.rescores.tolist() == [1, 0]
  assert state.cache.size > 40  # the re-score did not fit the cache after compaction
  for r, steps in enumerate((merging, plain)):
    want = [prm.full_scores([(question, steps[:k + 1])])[0][-1] for k in range(2)]
    assert_close(np.array([g[r] for g in got]), np.array(want))
  # Row 0's second step fed its whole text again; row 1's only its new tokens.
  assert consumed[2][0] - consumed[1][0] == len(ids1)
  assert consumed[2][1] == len(prm.encode(question, plain)[0])


def test_finished_solutions_score_each_step_and_skip_an_eos_alone(bridged):
  """verifier_eval's full passes through the bridge: one score per policy step, equal to
  the PRM's full pass; an EOS alone after the last delimiter is no step (NaN, skipped by
  every aggregation), and a solution without steps has none; scores do not depend on the
  batch size."""
  from ttc_jax.verifiers.scoring import aggregate_steps
  ctx, prm = bridged
  tok, bridge = ctx.tokenizer, ctx.prm
  step, eos = tok.step_ids[0], tok.eos_ids[0]
  gens = [[11, 12, step, 13, step, eos], [14, 15, eos], [eos]]
  questions = ["What is 12 + 30?", "Let x = 3. What is 2x?", "What is 1/2 + 1/3?"]
  got = bridge.solution_scores(questions, gens, batch_size=2)
  assert [len(g) for g in got] == [3, 1, 1]
  assert np.isnan(got[0][2]) and np.isnan(got[2][0])
  want = prm.full_scores([(questions[0], ["11 12 " + str(step), "13 " + str(step)])])[0]
  assert_close(got[0][:2], want)
  for b in (1, 3):
    again = bridge.solution_scores(questions, gens, batch_size=b)
    for x, y in zip(again, got):
      np.testing.assert_allclose(x, y, rtol=1e-5)
  assert_close(aggregate_steps(got, "last"), np.array([got[0][1], got[1][0], 0.0]))
  assert_close(aggregate_steps(got, "prod"), np.array([got[0][0] * got[0][1], got[1][0], 0.0]))
  lengths = bridge.solution_lengths(questions, gens)
  assert lengths[2] == 0 and lengths[0] == len(prm.encode(questions[0], [
      "11 12 " + str(step), "13 " + str(step)])[0])


@pytest.mark.parametrize("strategy", ["best_of_n", "beam"])
def test_an_imported_prm_and_the_policy_s_confidence_search_together(bridged, policy_model,
                                                                     strategy):
  """The real-model study's PRM + confidence (verifier_choice's ens_prm over an imported PRM):
  a candidate's score is the ensemble of the adapted PRM's score of its steps and the policy's
  confidence in its tokens, as the full passes give them, whatever the batch; the budget is
  the PRM's alone."""
  from search_fixtures import PROBLEMS
  from search_fixtures import full_pass_steps
  from ttc_jax.search import BeamSearch
  from ttc_jax.search import BestOfN
  from ttc_jax.verifiers import ensemble
  from ttc_jax.verifiers.confidence import ConfidenceVerifier
  from ttc_jax.verifiers.confidence import Measure
  ctx, _ = bridged
  parts = [ctx.prm, ConfidenceVerifier(Measure("logprob", "mean"), policy_model, pad_id=0),
           ConfidenceVerifier(Measure("logprob", "min"), policy_model, pad_id=0)]
  e = ensemble.Ensemble(("prm_last", "conf_logprob_mean", "policy_likelihood"),
                        (0.8, 1.5, 0.3), -0.4)
  both = dataclasses.replace(ctx, prm=ensemble.EnsembleVerifier(e, parts, "ens_prm"))
  search = BestOfN(n=4) if strategy == "best_of_n" else BeamSearch(n=4, width=2, max_rounds=40)
  together = search.run(both, PROBLEMS[:2])
  checked = 0
  for problem, res in zip(PROBLEMS[:2], together):
    for c in res.candidates:
      comp = [full_pass_steps(v, ctx.tokenizer, problem, c.tokens) for v in parts]
      if not len(comp[0]) or np.isnan(comp[0][-1]):
        continue  # no step the PRM reads
      assert_close(c.score, e.combine([np.float64(x[-1]) for x in comp]))
      checked += 1
    alone = search.run(both, [problem])[0]
    assert [c.tokens for c in alone.candidates] == [c.tokens for c in res.candidates]
    assert_close([c.score for c in alone.candidates], [c.score for c in res.candidates])
  assert checked >= 2
  if strategy == "best_of_n":  # the same samples: charged exactly as the PRM alone
    for r, b in zip(together, search.run(ctx, PROBLEMS[:2])):
      assert r.budget.prm_tokens == b.budget.prm_tokens > 0
