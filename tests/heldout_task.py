"""A task of one's own, registered from outside ttc_jax (README, "A task of your own").

Running sums modulo a number: "3 5 6" -> "0+3=3\n3+5=1\n1+6=0\nAnswer: 0" (mod 7).
The launch scripts load it with --task_module=heldout_task.
"""

import numpy as np

from ttc_jax import tasks


class ModSum(tasks.Task):
  name, step_delimiter, answer_marker = "modsum", "\n", "Answer:"
  difficulty_label = "number of terms"

  def __init__(self, terms=3, modulus=7, num_train=300, num_test=40, seed=0):
    if not (terms >= 1 and modulus >= 2):
      raise ValueError(f"need terms >= 1 and modulus >= 2; got terms={terms}, modulus={modulus}.")
    self.terms, self.modulus, self.seed = terms, modulus, seed
    self.sizes = {"train": num_train, "test": num_test}

  @property
  def params(self):
    return {"terms": self.terms, "modulus": self.modulus, "seed": self.seed, **self.sizes}

  def num_examples(self, split):
    return self.sizes[split]

  def get(self, split, index):
    self._check_split_index(split, index)
    rng = np.random.default_rng([self.seed, tasks.SPLITS.index(split), index])
    xs = rng.integers(0, self.modulus, int(rng.integers(1, self.terms + 1)))
    steps, v = [], 0
    for x in xs:
      steps.append(f"{v}+{x}={(v + x) % self.modulus}")
      v = (v + x) % self.modulus
    return tasks.Problem(uid=f"modsum/{split}/{index}", index=index, split=split,
                         question=" ".join(map(str, xs)), answer=str(v), difficulty=len(xs),
                         solution="\n".join(steps + [f"Answer: {v}"]))


tasks.register_task("modsum", ModSum, dict(terms=3, modulus=7, num_train=300, num_test=40, seed=0))
