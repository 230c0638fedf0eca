"""Tests for the SentencePiece tokenizer wrapper."""

import os

import numpy as np
import pytest

from ttc_jax import tasks
from ttc_jax.tokenizers import spm as tokenizer_lib
from ttc_jax.tokenizers.spm import SentencePieceTokenizer

_NUM_TEXTS = 2000


@pytest.fixture(scope="module")
def task():
  return tasks.get_task("arith")


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
  return os.path.join(str(tmp_path_factory.mktemp("tok")), "sub", "arith")


@pytest.fixture(scope="module")
def tok(task, prefix):
  return SentencePieceTokenizer.train(task, prefix, vocab_size=64, num_texts=_NUM_TEXTS)


@pytest.fixture(scope="module")
def problems(task):
  return ([task.get("train", i) for i in range(1000)] +
          [task.get("test", i) for i in range(task.num_examples("test"))])


def _unused_ids(tok):
  return {i for i in range(tok.vocab_size)
          if tok.id_to_piece(i).startswith("<unused")}


class TestVocabulary:

  def test_layout(self, tok, task):
    assert tok.vocab_size == 64
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert (tok.step_ids, tok.eos_ids, tok.answer_id) == ((4,), (2,), 5)
    assert [tok.id_to_piece(i) for i in range(6)] == [
        "<pad>", "<s>", "</s>", "<unk>", task.step_delimiter,
        task.answer_marker]
    assert (tok.step_piece, tok.answer_piece) == ("\n", "Answer:")
    # Unused padding pieces form a suffix of the vocabulary.
    unused = _unused_ids(tok)
    assert unused and unused == set(range(min(unused), tok.vocab_size))

  def test_files_and_load(self, tok, prefix):
    with open(prefix + ".model", "rb") as f:
      assert f.read() == tok.serialized_model
    with open(prefix + ".vocab", encoding="utf-8") as f:
      lines = f.read().splitlines()
    assert len(lines) == tok.vocab_size
    assert lines[4].split("\t")[0] == "\\n"
    loaded = SentencePieceTokenizer.load(prefix + ".model")
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode("12 +3\n12+3=15") == tok.encode("12 +3\n12+3=15")

  def test_training_is_deterministic(self, tok, task, tmp_path):
    again = SentencePieceTokenizer.train(task, str(tmp_path / "again"), vocab_size=64,
                            num_texts=_NUM_TEXTS)
    assert again.serialized_model == tok.serialized_model
    with open(str(tmp_path / "again.model"), "rb") as f:
      assert f.read() == tok.serialized_model

  def test_other_vocab_sizes(self, task, tmp_path):
    small = SentencePieceTokenizer.train(task, str(tmp_path / "s"), vocab_size=32,
                            num_texts=200)
    assert small.vocab_size == 32
    with pytest.raises(ValueError, match="vocab_size=12 is too small"):
      SentencePieceTokenizer.train(task, str(tmp_path / "t"), vocab_size=12, num_texts=200)

  def test_bpe(self, task, tmp_path, problems):
    bpe = SentencePieceTokenizer.train(task, str(tmp_path / "bpe"), vocab_size=48,
                          num_texts=500, model_type="bpe")
    assert bpe.vocab_size == 48 and (bpe.step_ids, bpe.answer_id) == ((4,), 5)
    for p in problems[:200]:
      text = task.format_prompt(p) + p.solution
      assert bpe.decode(bpe.encode(text)) == text

  def test_check_vocab(self, tok):
    tok.check_vocab(64)
    tok.check_vocab(np.int64(64))
    with pytest.raises(ValueError, match=r"65.*64"):
      tok.check_vocab(65)

  def test_rejects_foreign_model(self, task, tmp_path):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    prefix = str(tmp_path / "plain")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(task.corpus("train", 50))),
        model_prefix=prefix, vocab_size=30, hard_vocab_limit=False,
        minloglevel=2)  # Default ids: unk=0, bos=1, eos=2, no pad.
    with pytest.raises(ValueError, match="Unexpected"):
      SentencePieceTokenizer.load(prefix + ".model")


class TestEncoding:

  def test_round_trip_on_task_texts(self, tok, task, problems):
    unused = _unused_ids(tok)
    for p in problems:
      for text in (task.format_prompt(p), p.solution,
                   task.format_prompt(p) + p.solution):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.unk_id not in ids
        assert not unused & set(ids)

  def test_round_trip_whitespace(self, tok):
    for text in ("", " ", "  12", "12 ", "\n", "\n\n1 \n  2\n", " +3  *4 "):
      assert tok.decode(tok.encode(text)) == text

  def test_prompt_solution_concatenation(self, tok, task, problems):
    for p in problems[:300]:
      prompt = task.format_prompt(p)
      assert (tok.encode(prompt) + tok.encode(p.solution) ==
              tok.encode(prompt + p.solution))

  def test_step_and_answer_pieces(self, tok, task, problems):
    assert tok.encode("\n") == [tok.step_ids[0]]
    assert tok.encode("Answer:") == [tok.answer_id]
    for p in problems[:300]:
      ids = tok.encode(p.solution)
      num_steps = len(task.split_steps(p.solution))
      assert num_steps == p.difficulty + 1  # The answer line is a step.
      assert ids.count(tok.step_ids[0]) == num_steps - 1
      assert ids.count(tok.answer_id) == 1
      assert tok.encode(task.format_prompt(p)).count(tok.step_ids[0]) == 1

  def test_digits_are_single_pieces(self, tok, problems, task):
    digit_ids = [tok.encode(d) for d in "0123456789"]
    assert all(len(ids) == 1 for ids in digit_ids)
    assert len({ids[0] for ids in digit_ids}) == 10
    for p in problems[:300]:
      for i in tok.encode(task.format_prompt(p) + p.solution):
        piece = tok.id_to_piece(i)
        assert len(piece) == 1 or not any(c.isdigit() for c in piece), piece
      assert len(tok.encode(p.answer)) == len(p.answer)

  def test_unseen_characters_become_unk(self, tok):
    ids = tok.encode("<unused0>")
    assert tok.unk_id in ids
    assert not _unused_ids(tok) & set(ids)

  def test_bos_eos(self, tok):
    body = tok.encode("12+3=15")
    assert tok.encode("12+3=15", bos=True) == [tok.bos_id] + body
    assert tok.encode("12+3=15", eos=True) == body + [tok.eos_id]

  def test_decode_stops_at_eos_and_skips_pad_bos(self, tok):
    body = tok.encode("7*3=21\nAnswer: 21")
    junk = tok.encode("9")
    ids = [tok.pad_id, tok.bos_id] + body + [tok.eos_id] + junk + [tok.eos_id]
    assert tok.decode(ids) == "7*3=21\nAnswer: 21"
    assert tok.decode(np.array(ids, dtype=np.int32)) == "7*3=21\nAnswer: 21"
    assert tok.decode([tok.eos_id] + body) == ""
    with pytest.raises(ValueError, match="outside"):
      tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="outside"):
      tok.decode([-1])


class TestBatch:

  def test_right_padding(self, tok):
    texts = ["1+2=3", "10+20=30\nAnswer: 30", ""]
    tokens, mask = tok.encode_batch(texts)
    lengths = [len(tok.encode(t)) + 1 for t in texts]
    assert tokens.dtype == np.int32 and mask.dtype == bool
    assert tokens.shape == mask.shape == (3, max(lengths))
    for row, m, text, n in zip(tokens, mask, texts, lengths):
      assert m.tolist() == [True] * n + [False] * (len(m) - n)
      assert row[:n].tolist() == tok.encode(text, bos=True)
      assert (row[n:] == tok.pad_id).all()
    assert tok.decode_batch(tokens) == texts

  def test_left_padding_with_pad_to(self, tok):
    texts = ["1+2=3", "10+20=30"]
    tokens, mask = tok.encode_batch(texts, bos=True, eos=True, pad_to=16,
                                    padding_side="left")
    assert tokens.shape == mask.shape == (2, 16)
    for row, m, text in zip(tokens, mask, texts):
      ids = tok.encode(text, bos=True, eos=True)
      n = len(ids)
      assert m.tolist() == [False] * (16 - n) + [True] * n
      assert row[16 - n:].tolist() == ids
      assert (row[:16 - n] == tok.pad_id).all()
    assert tok.decode_batch(tokens) == texts

  def test_exact_fit_and_too_long(self, tok):
    texts = ["1", "123+456=579"]
    n = len(tok.encode(texts[1], bos=True))
    tokens, mask = tok.encode_batch(texts, pad_to=n)
    assert mask[1].all() and tokens.shape == (2, n)
    pattern = rf"Text 1 .* {n} tokens.*pad_to={n - 1}"
    with pytest.raises(ValueError, match=pattern):
      tok.encode_batch(texts, pad_to=n - 1)

  def test_empty_batch_and_bad_side(self, tok):
    tokens, mask = tok.encode_batch([], pad_to=4)
    assert tokens.shape == mask.shape == (0, 4)
    with pytest.raises(ValueError, match="padding_side"):
      tok.encode_batch(["1"], padding_side="middle")


def test_train_model_proto_requires_symbols():
  with pytest.raises(ValueError, match="non-empty"):
    tokenizer_lib.train_model_proto(["1+1=2"], step_delimiter="",
                                    answer_marker="A:", vocab_size=32)
