"""Materializes a `Task` as a TFDS dataset in ArrayRecord format.

Works without TensorFlow: the dataset is written with
`file_format="array_record"` and read back with `builder.as_data_source()`,
which gives random access (`len(ds)`, `ds[i]`) suitable for grain-style input
pipelines. (`tfds.load` / `as_dataset` need TensorFlow and are not used.)

Each record is one `Problem`:

  uid, split, question, solution, answer  text (read back as `bytes`)
  index                                  int64
  difficulty                             int32
  one int32 feature per `task.meta_keys` entry (e.g. operand_digits)

Records are written in index order (`disable_shuffling=True`), so record `i`
of a split is problem `i`; the `index` feature still records it explicitly.

Staleness: the builder config name is `f"{task.name}-{digest}"`, where
`digest` hashes the task's name, `params` and `meta_keys`. Any change of
generation parameters therefore lands in a different directory instead of
silently reusing stale data; the parameters are also stored in the dataset
metadata and checked on load.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ttc_jax.tasks import base

BUILDER_NAME = "ttc_task"
tfds.disable_progress_bar()  # stages log their own progress (ttc_jax.progress)
_TEXT_FIELDS = ("uid", "split", "question", "solution", "answer")


def _canonical_params(task: base.Task) -> dict[str, Any]:
  """JSON round-tripped description of everything that determines the data."""
  spec = {
      "task": task.name,
      "params": dict(task.params),
      "meta_keys": list(task.meta_keys),
  }
  return json.loads(json.dumps(spec, sort_keys=True))


def config_name(task: base.Task) -> str:
  """TFDS config name of `task`: its name and a hash of its parameters."""
  blob = json.dumps(_canonical_params(task), sort_keys=True).encode("utf-8")
  return f"{task.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


def problem_to_record(
    problem: base.Problem, meta_keys: Sequence[str]
) -> dict[str, Any]:
  """Feature dict of `problem`, as written by `TaskDatasetBuilder`."""
  record: dict[str, Any] = {k: getattr(problem, k) for k in _TEXT_FIELDS}
  record["index"] = problem.index
  record["difficulty"] = problem.difficulty
  for key in meta_keys:
    record[key] = int(problem.meta[key])
  return record


def record_to_problem(
    record: Mapping[str, Any], meta_keys: Sequence[str]
) -> base.Problem:
  """Decodes a data-source record (bytes text, numpy ints) into a `Problem`.

  Args:
    record: One element of the data source returned by `build_data_source`.
    meta_keys: The task's `meta_keys`.
  """

  def text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)

  return base.Problem(
      uid=text(record["uid"]),
      index=int(record["index"]),
      split=text(record["split"]),
      question=text(record["question"]),
      solution=text(record["solution"]),
      answer=text(record["answer"]),
      difficulty=int(record["difficulty"]),
      meta={key: int(record[key]) for key in meta_keys},
  )


class TaskDatasetBuilder(
    tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """TFDS builder writing every problem of every split of a `Task`.

  Not registered in the TFDS registry: it is instantiated with a task object,
  e.g. `TaskDatasetBuilder(task, data_dir=...)`, never by name.
  """

  name = BUILDER_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One record per Problem, written in index order."}

  def __init__(self, task: base.Task, *, data_dir: str, **kwargs: Any):
    """Initializes the builder.

    Args:
      task: Task to materialize; its `params` select the config.
      data_dir: Root directory of the TFDS data.
      **kwargs: Forwarded to `tfds.core.GeneratorBasedBuilder`.
    """
    self._task = task
    config = tfds.core.BuilderConfig(
        name=config_name(task),
        description=json.dumps(_canonical_params(task), sort_keys=True),
    )
    kwargs.setdefault("file_format", "array_record")
    super().__init__(config=config, data_dir=data_dir, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default resolves this through the optional `importlib_resources`
    # package (not a dependency here); the plain file path is equivalent. It
    # is only used to look for a download checksums file, which we lack.
    return epath.Path(__file__)

  @property
  def task(self) -> base.Task:
    return self._task

  def _info(self) -> tfds.core.DatasetInfo:
    features = {k: tfds.features.Text() for k in _TEXT_FIELDS}
    features["index"] = np.int64
    features["difficulty"] = np.int32
    for key in self._task.meta_keys:
      features[key] = np.int32
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Problems of the {self._task.name!r} task.",
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(_canonical_params(self._task)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: problems are generated.
    return {
        split: self._generate_examples(split)
        for split in base.SPLITS
        if self._task.num_examples(split) > 0
    }

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    for index in range(self._task.num_examples(split)):
      problem = self._task.get(split, index)
      yield index, problem_to_record(problem, self._task.meta_keys)


def build_data_source(
    task: base.Task, split: str, data_dir: str
) -> Sequence[Mapping[str, Any]]:
  """Builds `task` into `data_dir` if needed and returns a split's data source.

  Args:
    task: Task to materialize.
    split: "train" or "test".
    data_dir: Root directory of the TFDS data (created if missing).

  Returns:
    A random-access sequence of records (`len`, `[i]`); decode a record with
    `record_to_problem(record, task.meta_keys)`.

  Raises:
    ValueError: For an unknown or empty split.
    RuntimeError: If the data on disk does not match the task's parameters.
  """
  if split not in base.SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {base.SPLITS}.")
  if task.num_examples(split) == 0:
    raise ValueError(f"Split {split!r} of task {task.name!r} is empty.")
  builder = TaskDatasetBuilder(task, data_dir=data_dir)
  builder.download_and_prepare()
  stored = dict(builder.info.metadata or {})
  if stored != _canonical_params(task):
    raise RuntimeError(
        f"Dataset at {builder.data_path} was built with parameters {stored}, "
        f"expected {_canonical_params(task)}."
    )
  source = builder.as_data_source(split=split)
  if len(source) != task.num_examples(split):
    raise RuntimeError(
        f"Dataset at {builder.data_path} has {len(source)} {split} records, "
        f"expected {task.num_examples(split)}."
    )
  return source
