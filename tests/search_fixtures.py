"""A search test bed: token ids that are their own text, a task that reads them."""


class Tok:
  """Token ids are their own text; the 'answer' is the token before EOS."""

  pad_id, bos_id = 0, 1
  step_pairs = ()

  def __init__(self, eos_id, step_id):
    self.eos_id, self.step_id = eos_id, step_id
    self.eos_ids, self.step_ids = (eos_id,), (step_id,)

  def encode(self, text, bos=False):
    return ([self.bos_id] if bos else []) + [int(t) for t in text.split()]

  def encode_prompt(self, text):
    return self.encode(text, bos=True)

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


class Task:
  def format_prompt(self, p):
    return p.question

  def extract_answer(self, text):
    toks = text.split()
    return toks[-2] if len(toks) >= 2 else None

  def normalize_answer(self, a):
    return a

  def is_correct(self, text, p):
    return self.extract_answer(text) == p.answer


class Problem:
  def __init__(self, index, question, answer):
    self.index, self.question, self.answer = index, question, answer


PROBLEMS = [Problem(3, "5 9 12 7", "20"), Problem(8, "14 3", "11"),
            Problem(11, "30 31 2 9 9 4", "6")]


def full_pass_steps(verifier, tokenizer, problem, tokens) -> list:
  """A search candidate's step scores by ``verifier``'s full pass over its finished row (the
  prompt as search encodes it, then ``tokens``): what its incremental scores must equal."""
  from ttc_jax.sampling.solutions import step_ends  # pylint: disable=g-import-not-at-top
  prompt = tokenizer.encode(problem.question, bos=True)
  ends = [len(prompt) + i for i in step_ends(tokens, tokenizer.step_ids, tokenizer.eos_ids)]
  (steps,) = verifier.solution_step_scores([problem.question], [prompt + list(tokens)],
                                           [len(prompt)], [ends], batch_size=4)
  return steps
