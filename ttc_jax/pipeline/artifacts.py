"""Artifacts: what a stage writes, and the self-describing objects read back from it.

Layout of a workdir::

  WORKDIR/<stage>/<id>/        one artifact: its stage.json and the stage's outputs
  WORKDIR/<stage>/latest       symlink to the newest finished artifact of the stage

``<id>`` is the artifact's identity: a hash of the stage's key (its own config
sections and the identities of the artifacts it read; see ``pipeline.stages``).
Another config, or another upstream artifact, is another directory: nothing is
ever resumed or reused across a change, and switching back reuses the old one.

``stage.json`` says what the directory is: stage, identity, key, status
('running' until every output is written, then 'done'), a summary and
provenance. A model artifact also has ``model.json``: its architecture
(``TransformerConfig``), its tokenizer (a path relative to the artifact and the
file's sha256) and how it was made; loading a model reads only that, never an
experiment config, so a PRM may differ in size from its policy and an imported
checkpoint describes itself the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import socket
import time
from typing import Any, Callable

import jax
import numpy as np

from ttc_jax import parallel
from ttc_jax import tasks
from ttc_jax.tokenizers.hf import HFTokenizer
from ttc_jax.models import checkpoints
from ttc_jax.models import hf_import
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.pipeline import store
from ttc_jax.progress import Progress
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SpecialIds
from ttc_jax.tokenizers import Tokenizer
from ttc_jax.tokenizers.spm import SentencePieceTokenizer
from ttc_jax.verifiers import adapters
from ttc_jax.verifiers import confidence
from ttc_jax.verifiers.confidence import ConfidenceVerifier
from ttc_jax.verifiers.implicit import ImplicitRewardVerifier
from ttc_jax.verifiers.likelihood import LikelihoodVerifier
from ttc_jax.verifiers.base import Verifier
from ttc_jax.verifiers.scoring import Scorer
from ttc_jax.verifiers.value_head import ValueHeadVerifier

STAGE_FILE = "stage.json"
MODEL_FILE = "model.json"


class ArtifactError(RuntimeError):
  """An artifact is missing, unfinished, or not what its reader expects."""


class StageDir:
  """The directory of one artifact, as its stage sees it: named files inside it only."""

  def __init__(self, path: str, stage: str, identity: str):
    self.dir, self.stage, self.identity = path, stage, identity

  @property
  def primary(self) -> bool:
    return parallel.is_primary()

  def path(self, *names: str) -> str:
    return os.path.join(self.dir, *names)

  def exists(self, name: str) -> bool:
    return os.path.exists(self.path(name))

  def write_json(self, name: str, obj: Any) -> None:
    store.write_json(self.path(name), obj)

  def read_json(self, name: str) -> Any:
    return store.read_json(self.path(name))

  def write_text(self, name: str, text: str) -> None:
    store.write_text(self.path(name), text)

  def save_npz(self, name: str, arrays: dict[str, np.ndarray]) -> None:
    store.save_npz(self.path(name), arrays)

  def load_npz(self, name: str) -> dict[str, np.ndarray]:
    return store.load_npz(self.path(name))

  def save_figure(self, name: str, fig) -> None:
    store.save_figure(self.path(name), fig)

  def shards(self, name: str) -> store.Shards:
    """Finished shards ``name`` (their manifest's count)."""
    return store.Shards.open(self.dir, name)

  def map_shards(self, name: str, items: list, per: int,
                 make: Callable[[list], dict[str, np.ndarray]],
                 log: Callable[[str], None] | None = None) -> store.Shards:
    """Resumable work over ``items``: shard i holds ``make(items[i * per:(i + 1) * per])``;
    finished shards are kept, the missing ones computed. Returns the shards."""
    shards = store.Shards.create(self.dir, name, math.ceil(len(items) / per))
    todo = shards.todo()
    progress = Progress(shards.count, f"{name} shards", unit="shards", every_s=0,
                        initial=shards.count - len(todo), log_fn=log)
    for i in todo:
      shards.save(i, make(items[i * per:(i + 1) * per]))
      progress.update(1)
    self.barrier()
    return shards

  def cells(self, name: str) -> store.CellLog:
    return store.CellLog(self.path(name))

  def barrier(self) -> None:
    parallel.barrier(f"{self.stage}/{self.identity}")


def provenance() -> dict:
  return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "host": socket.gethostname(), "python": platform.python_version(),
          "jax": jax.__version__, "processes": parallel.process_count(),
          "devices": [str(d) for d in jax.devices()[:8]]}


def read_stage(path: str) -> dict | None:
  f = os.path.join(path, STAGE_FILE)
  return store.read_json(f) if os.path.exists(f) else None


# ----------------------------------------------------------------------------
# Sealing: what a finished artifact holds, byte for byte
# ----------------------------------------------------------------------------
def seal(record: dict, directory: str) -> dict:
  """``record`` (a finished stage record) with the sha256 of every file of the artifact
  (``files``), their joint digest (``content``: what an artifact reading this one records
  of it) and the record's own digest (``record_sha256``)."""
  files = store.tree_digests(directory, skip=(STAGE_FILE,))
  record = dict(record, files=files, content=store.digest(files, 16))
  record.pop("record_sha256", None)
  return dict(record, record_sha256=store.digest(record, 16))


def check_record(record: dict, directory: str) -> None:
  """A sealed record is the one that was written (no edit, no damaged byte)."""
  if "record_sha256" not in record:
    return  # made before artifacts were sealed
  rest = {k: v for k, v in record.items() if k != "record_sha256"}
  if store.digest(rest, 16) != record["record_sha256"]:
    raise ArtifactError(f"{os.path.join(directory, STAGE_FILE)} was changed after its stage "
                        "finished (its digest differs)")


_VERIFIED: dict[tuple, str] = {}  # (path, inode, size, mtime_ns, ctime_ns) -> sha256


def verify(record: dict, directory: str) -> None:
  """The files of a finished artifact are those its record sealed: none missing, none
  changed (every byte read, once per process and file). Raises ArtifactError naming the
  first file that differs. Artifacts made before sealing have no ``files``: not checked."""
  check_record(record, directory)
  for rel, sha in (record.get("files") or {}).items():
    path = os.path.join(directory, rel)
    try:
      st = os.stat(path)
    except OSError:
      raise ArtifactError(f"{path} is missing (it was there when its stage finished)") from None
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _VERIFIED:
      _VERIFIED[key] = store.file_digest(path)
    if _VERIFIED[key] != sha:
      raise ArtifactError(f"{path} differs from the file its stage wrote (sha256 "
                          f"{_VERIFIED[key][:12]}, recorded {sha[:12]}): changed or damaged "
                          "since")


def inside(root: str, path: str, what: str) -> str:
  """``path`` (relative to ``root``, or absolute) if it lies inside ``root``, else an
  ArtifactError naming ``what``."""
  full = os.path.realpath(os.path.join(root, path))
  if os.path.commonpath([full, os.path.realpath(root)]) != os.path.realpath(root):
    raise ArtifactError(f"{what}={path!r} points outside {root}")
  return full


# ----------------------------------------------------------------------------
# The task's data
# ----------------------------------------------------------------------------
class TaskData:
  """A task and its problems, materialized as TFDS array_record in the artifact."""

  def __init__(self, task: tasks.Task, data_dir: str):
    self.task, self.data_dir = task, data_dir
    self._sources = {}

  def build(self) -> None:
    for split in tasks.SPLITS:
      self._source(split)

  def _source(self, split: str):
    if split not in self._sources:
      # Here, not at the top: tensorflow_datasets adds about a second to every process start.
      from ttc_jax.tasks import tfds_builder  # pylint: disable=g-import-not-at-top
      self._sources[split] = tfds_builder.build_data_source(self.task, split, self.data_dir)
    return self._sources[split]

  def problems(self, split: str, num: int | None = None, start: int = 0) -> list[tasks.Problem]:
    """Problems ``start .. start + num - 1`` of ``split`` (default: to the end)."""
    source = self._source(split)
    end = len(source) if num is None else start + num
    if not 0 <= start < end <= len(source):
      raise ValueError(f"asked for {split} problems {start}..{end - 1}; the task has "
                       f"{len(source)} {split} problems (task.num_{split}).")
    from ttc_jax.tasks import tfds_builder  # pylint: disable=g-import-not-at-top
    return [tfds_builder.record_to_problem(source[i], self.task.meta_keys)
            for i in range(start, end)]


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class ModelArtifact:
  """A trained (or imported) model, read from its own description."""

  identity: str
  path: str
  description: dict
  config: TransformerConfig
  tokenizer: Tokenizer
  # Reads the parameters (an imported checkpoint's on first use: a stage that only needs
  # the architecture or the tokenizer never reads gigabytes of weights).
  loader: Callable[[], Transformer] = dataclasses.field(repr=False)
  # An imported PRM's format (how it reads a solution); None: a value head over the
  # policy's own tokens (the PRMs ttc_jax trains).
  prm_format: adapters.PRMFormat | None = None
  _model: Transformer | None = dataclasses.field(default=None, repr=False)
  _core: SamplingCore | None = dataclasses.field(default=None, repr=False)
  _adapted: adapters.AdaptedPRM | None = dataclasses.field(default=None, repr=False)
  _value_head: ValueHeadVerifier | None = dataclasses.field(default=None, repr=False)
  _lm_verifier: ImplicitRewardVerifier | LikelihoodVerifier | None = dataclasses.field(
      default=None, repr=False)

  @property
  def model(self) -> Transformer:
    if self._model is None:
      self._model = self.loader()
      if self._model.config != self.config:
        raise ArtifactError(f"the parameters of {self.path} are not of the architecture its "
                            f"{MODEL_FILE} records (re-run its stage).")
    return self._model

  @property
  def special_ids(self) -> SpecialIds:
    tok = self.tokenizer
    return SpecialIds(pad_id=tok.pad_id, eos_ids=tok.eos_ids, step_ids=tok.step_ids,
                      suppress_ids=tok.suppress_ids, step_pairs=tok.step_pairs)

  def sampling_core(self) -> SamplingCore:
    """The model's sampling core on the process's sampling mesh (``parallel.local_mesh``:
    one device unless the launch flag --mesh says otherwise; kept: its compiled functions
    are reused by every stage that samples from this model)."""
    if self._core is None:
      self._core = SamplingCore(self.model, self.special_ids)
    return self._core

  def scorer(self, mesh=None) -> Scorer:
    return Scorer(self.model, mesh=mesh, pad_id=self.tokenizer.pad_id)

  def verifier(self, policy_tokenizer) -> Verifier:
    """This model as a verifier of the policy's solutions: a value head over the policy's
    tokens (the PRMs and ORMs trained here), or an imported PRM that reads the policy's
    steps in its own format and tokens. Kept: its parameters placed once, its functions
    compiled once."""
    if self.prm_format is None:
      if self._value_head is None:
        self._value_head = ValueHeadVerifier(self.model, pad_id=self.tokenizer.pad_id)
      return self._value_head
    if self._adapted is None:
      self._adapted = adapters.AdaptedPRM(self.model, self.tokenizer, self.prm_format)
    return adapters.PolicyBridge(self._adapted, policy_tokenizer)

  def lm_verifier(self, policy: "ModelArtifact") -> ImplicitRewardVerifier | LikelihoodVerifier:
    """This model (an LM-head verifier trained from ``policy``) scoring ``policy``'s
    solutions: by its implicit reward against it (an implicit PRM or a DPO verifier), or by
    its own likelihood of them (an LM trained further on reference solutions: its
    ``aggregation`` of the tokens' log-probabilities). Kept."""
    made = self.description.get("made_by", {})
    if self.config.head != "lm" or ("beta" not in made and "aggregation" not in made):
      raise ArtifactError(f"{self.path} is not an LM-head verifier (no implicit-reward beta nor "
                          f"likelihood aggregation in its {MODEL_FILE}).")
    if made.get("policy") != policy.identity:
      raise ArtifactError(f"{self.path} was trained from policy {made.get('policy')}, not "
                          f"{policy.identity}: it verifies that policy's solutions.")
    if self._lm_verifier is None:
      if "beta" in made:
        self._lm_verifier = ImplicitRewardVerifier(
            self.model, policy.model, beta=made["beta"], pad_id=self.tokenizer.pad_id,
            name=made["stage"])
      else:
        self._lm_verifier = LikelihoodVerifier(
            self.model, confidence.Measure("logprob", made["aggregation"]),
            pad_id=self.tokenizer.pad_id, name=made["stage"])
    return self._lm_verifier

  def confidence_verifier(self, measure: confidence.Measure) -> ConfidenceVerifier:
    """This model's (a policy's) confidence in the tokens it samples as a verifier."""
    if self.config.head != "lm":
      raise ArtifactError(f"{self.path} has a {self.config.head} head: the confidence verifier "
                          "reads a policy's (LM head) own token probabilities.")
    return ConfidenceVerifier(measure, self.model, pad_id=self.tokenizer.pad_id)

  def summary(self) -> dict:
    c = self.config
    out = {"id": self.identity, "params": c.num_params(), "d_model": c.d_model,
           "num_layers": c.num_layers, "head": c.head}
    if self.description.get("checkpoint", {}).get("format") == "hf":
      out["imported"] = self.description["checkpoint"]["dir"]
    if self.prm_format is not None:
      out["prm_format"] = self.prm_format.name
    return out


def tokenizer_ref(artifact_dir: str, tokenizer_path: str) -> dict:
  """How a model artifact names its tokenizer: a relative path and the file's sha256."""
  return {"path": os.path.relpath(tokenizer_path, artifact_dir),
          "sha256": store.file_digest(tokenizer_path)}


def write_model(out: StageDir, config: TransformerConfig, tokenizer: dict, *, step: int,
                made_by: dict, checkpoint_dir: str = "checkpoints") -> None:
  """Writes ``model.json`` next to the trainer's ``checkpoints/`` (final step ``step``; or
  another directory of the artifact holding the chosen step as its latest)."""
  out.write_json(MODEL_FILE, {
      "config": checkpoints.config_to_dict(config),
      "tokenizer": tokenizer,
      "checkpoint": {"dir": checkpoint_dir, "step": step},
      "made_by": made_by,
  })


def load_tokenizer(artifact_dir: str, ref: dict) -> SentencePieceTokenizer:
  # The tokenizer artifact of the same workdir (WORKDIR/<stage>/<id>/ -> WORKDIR).
  workdir = os.path.dirname(os.path.dirname(os.path.abspath(artifact_dir)))
  path = inside(workdir, os.path.join(os.path.abspath(artifact_dir), ref["path"]),
                f"the tokenizer path of {os.path.join(artifact_dir, MODEL_FILE)}")
  if not os.path.exists(path):
    raise ArtifactError(f"the tokenizer of {artifact_dir} is missing: {path}.")
  if ref.get("sha256") and store.file_digest(path) != ref["sha256"]:
    raise ArtifactError(f"{path} is not the tokenizer the model in {artifact_dir} was trained "
                        "with (sha256 differs).")
  return SentencePieceTokenizer.load(path)


def hf_tokenizer(directory: str, *, step_delimiter: str, chat: bool, system: str | None
                 ) -> HFTokenizer:
  """An imported checkpoint's tokenizer, its prompts framed as ``chat`` / ``system`` say."""
  return HFTokenizer.load(directory, step_delimiter=step_delimiter).with_prompt(
      chat=chat, system=system)


def write_imported_model(out: StageDir, config: TransformerConfig, directory: str, *,
                         tokenizer: dict, files: dict, prm_format: str | None,
                         made_by: dict) -> None:
  """``model.json`` of a Hugging Face checkpoint used in place (its weights are not copied):
  the architecture it imports as, its directory and files' sha256, its tokenizer's prompt
  framing and, for a PRM, its format (:data:`ttc_jax.verifiers.adapters.FORMATS`)."""
  out.write_json(MODEL_FILE, {
      "config": checkpoints.config_to_dict(config),
      "tokenizer": {"format": "hf", **tokenizer},
      "checkpoint": {"format": "hf", "dir": os.path.abspath(directory), "files": files},
      "prm_format": prm_format,
      "made_by": made_by,
  })


def load_model(artifact_dir: str, identity: str | None = None) -> ModelArtifact:
  """Reads a model artifact: architecture and tokenizer from its ``model.json``."""
  desc_path = os.path.join(artifact_dir, MODEL_FILE)
  if not os.path.exists(desc_path):
    raise ArtifactError(f"{artifact_dir} is not a model artifact (no {MODEL_FILE}).")
  desc = store.read_json(desc_path)
  config = checkpoints.config_from_dict(desc["config"])
  ckpt, fmt = desc["checkpoint"], None
  if ckpt.get("format") == "hf":
    t = desc["tokenizer"]
    tok = hf_tokenizer(ckpt["dir"], step_delimiter=t["step_delimiter"], chat=t["chat"],
                       system=t["system"])
    tok.check_vocab(config.vocab_size)
    # Straight onto the sampling mesh, each device reading its own shards (a 7B PRM does
    # not fit one chip whole); on first use.
    loader = lambda: hf_import.load(ckpt["dir"], max_seq_len=config.max_seq_len,
                                    param_dtype=config.param_dtype, dtype=config.dtype,
                                    mesh=parallel.local_mesh())
    model = None
    if desc.get("prm_format"):
      fmt = adapters.FORMATS[desc["prm_format"]]
  else:
    tok = load_tokenizer(artifact_dir, desc["tokenizer"])
    tok.check_vocab(config.vocab_size)
    ckpt_dir = inside(artifact_dir, ckpt["dir"],
                      f"checkpoint.dir of {os.path.join(artifact_dir, MODEL_FILE)}")
    loader = lambda: checkpoints.restore_params(
        ckpt_dir, checkpoints.abstract_model(config), step=ckpt["step"])
    model = loader()  # small: read at once, so a damaged checkpoint is named at load
  return ModelArtifact(identity=identity or os.path.basename(os.path.normpath(artifact_dir)),
                       path=artifact_dir, description=desc, config=config, tokenizer=tok,
                       loader=loader, prm_format=fmt, _model=model)
