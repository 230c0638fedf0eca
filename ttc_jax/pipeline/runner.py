"""Runs a stage and the inputs it is missing: identities, reuse, resume, validation.

``Pipeline(config, workdir).run('report')`` validates the whole config (nothing
is written before), then walks the stages the target needs in order: a stage
whose artifact (same identity) is finished is reused; an unfinished one
resumes (its own checkpoints, shards or cell log); a new identity starts a new
artifact and says which config keys or inputs differ from the stage's latest.
A stage's optional inputs (``Stage.optional``) are read when their artifact is
finished and never run for it; whether each was there is part of its identity,
so finishing one later (``make exchange``) makes the stage run again.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import time
from typing import Any, Callable

from absl import logging
import ml_collections

from ttc_jax import host
from ttc_jax import parallel
from ttc_jax.models import memory
from ttc_jax.models.checkpoints import CheckpointError
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline import store
from ttc_jax.pipeline.stages import BEFORE_CHECKS
from ttc_jax.pipeline.stages import Context
from ttc_jax.pipeline.stages import SPEED_ONLY
from ttc_jax.pipeline.stages import STAGES
from ttc_jax.progress import fmt_duration


def _section(config: ml_collections.ConfigDict, name: str) -> Any:
  value = config[name]
  return value.to_dict() if hasattr(value, "to_dict") else value


def _drop_speed_only(obj: Any, path: str = "") -> Any:
  if not isinstance(obj, dict):
    return obj
  out = {}
  for k, v in obj.items():
    p = f"{path}.{k}" if path else k
    if not any(fnmatch.fnmatchcase(p, pattern) for pattern in SPEED_ONLY):
      out[k] = _drop_speed_only(v, p)
  return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(obj, dict):
    out = {}
    for k, v in obj.items():
      out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  return {prefix: obj}


# Failures with a message that says it all: the launch script prints one line, no traceback.
KNOWN_ERRORS = (config_lib.ConfigError, artifacts.ArtifactError, store.StoreError,
                CheckpointError)


def with_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                   ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``overrides`` (dotted keys that must exist) set."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    path = key.split(".")
    parent = config
    for p in path[:-1]:
      if not isinstance(parent, ml_collections.ConfigDict) or p not in parent:
        raise config_lib.ConfigError(f"variant key {key!r}: no section {p!r}.")
      parent = parent[p]
    if not isinstance(parent, ml_collections.ConfigDict) or path[-1] not in parent:
      raise config_lib.ConfigError(f"variant key {key!r}: not a config key.")
    try:
      parent[path[-1]] = value
    except TypeError as e:
      raise config_lib.ConfigError(f"variant key {key!r}={value!r}: {e}") from e
  return config


class Pipeline:
  """The stages of one experiment config over one workdir."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               log: Callable[[str], None] = logging.info, point_latest: bool = True,
               lengths_checked: bool = False):
    if not workdir:
      raise config_lib.ConfigError("--workdir is required (the directory of the study's "
                                   "artifacts).")
    self.config, self.workdir, self.log = config, workdir, log
    self.point_latest = point_latest  # False for variants: 'latest' stays the study's
    self._ids: dict[str, str] = {}
    self._loaded: dict[str, Any] = {}
    # True when the caller checked the token lengths of this config (a stage process
    # of pipeline.jobs: its parent did, once).
    self._lengths_checked = lengths_checked
    self._memory_checked = False  # per process: its own devices and --mesh
    self.task = None

  # ------------------------------------------------------------------ roles
  def resolve(self, role: str) -> str | None:
    """The stage that fills ``role`` in this experiment (its ``stages`` config: e.g.
    'policy' -> 'hf_policy'; None: left out); default the stage of that name."""
    return config_lib.filled_by(self.config, role)

  def inputs_of(self, name: str) -> dict[str, str | None]:
    """{role: the stage filling it, or None} of stage ``name``'s inputs."""
    return {role: self.resolve(role) for role in STAGES[name].inputs}

  def target(self, name: str | None = None) -> str:
    """The stage that runs for ``name`` (default ``config.stage``): the stage filling that
    role in this experiment; a ConfigError if the experiment leaves it out."""
    name = name or self.config.stage
    resolved = self.resolve(name)
    if resolved is None:
      raise config_lib.ConfigError(f"stage {name!r}: this experiment leaves it out "
                                   f"(stages.{name}=None).")
    return resolved

  def validate_roles(self, target: str | None = None) -> None:
    """The ``stages`` config: known roles, each filled by a stage that can fill it, and no
    role left out (None) that a stage ``target`` needs does not declare in may_lack."""
    roles = dict(self.config.get("stages") or {})
    known = set(STAGES) | {i for st in STAGES.values() for i in st.inputs + st.optional}
    for role, name in roles.items():
      if role not in known:
        raise config_lib.ConfigError(f"stages.{role}: not a role any stage reads (roles: "
                                     f"{sorted(known)}).")
      if name is None:
        continue
      if name not in STAGES or (name != role and STAGES[name].fills != role):
        fill = sorted(s for s, st in STAGES.items() if s == role or st.fills == role)
        raise config_lib.ConfigError(f"stages.{role}={name!r}: expected a stage that fills "
                                     f"the role {role!r}: one of {fill} (or None).")
    for name in self.plan(self.target(target)):
      for role, filled in self.inputs_of(name).items():
        if filled is None and role not in STAGES[name].may_lack:
          raise config_lib.ConfigError(
              f"stages.{role}=None: stage {name!r} needs a {role!r} (it may do without "
              f"{list(STAGES[name].may_lack) or 'none of its inputs'}).")

  # ------------------------------------------------------------- identities
  def key(self, name: str) -> dict:
    stage = STAGES[name]
    sections = {s: _section(self.config, s) for s in stage.sections}
    key = {"stage": name, "version": stage.version, "config": _drop_speed_only(sections),
           "inputs": {role: self.identity(s) if s else None
                      for role, s in self.inputs_of(name).items()}}
    if stage.fingerprint is not None:
      key["content"] = stage.fingerprint(
          ml_collections.ConfigDict({s: self.config[s] for s in stage.sections}),
          os.path.join(self.workdir, ".digests.json"))
    if stage.optional:
      # Read when finished, never run for this stage: its result depends on whether they were.
      key["optional"] = {i: self.identity(s) if s and self.is_done(s) else None
                         for i, s in ((i, self.resolve(i)) for i in stage.optional)}
    return store.canonical(key)

  def identity(self, name: str) -> str:
    if name not in self._ids:
      self._ids[name] = store.digest(self.key(name))
    return self._ids[name]

  def directory(self, name: str) -> str:
    return os.path.join(self.workdir, name, self.identity(name))

  def stage_dir(self, name: str) -> artifacts.StageDir:
    return artifacts.StageDir(self.directory(name), name, self.identity(name))

  def plan(self, target: str) -> list[str]:
    """The stages ``target`` needs, inputs first (registry order)."""
    if target not in STAGES:
      raise config_lib.ConfigError(f"stage {target!r}: expected one of {list(STAGES)}.")
    need, todo = set(), [target]
    while todo:
      name = todo.pop()
      if name not in need:
        need.add(name)
        todo.extend(s for s in self.inputs_of(name).values() if s)
    return [s for s in STAGES if s in need]

  def is_done(self, name: str) -> bool:
    rec = artifacts.read_stage(self.directory(name))
    return bool(rec) and rec.get("status") == "done" and rec.get("id") == self.identity(name)

  # ------------------------------------------------------------------- run
  def validate(self, target: str | None = None) -> None:
    """Everything that needs no data, for running ``target`` (default ``config.stage``);
    nothing has been written when this raises."""
    self.task = config_lib.validate(self.config, list(STAGES))
    self.validate_roles(target)
    self._validate_variants()

  def _validate_variants(self) -> None:
    """The ablation's variants: keys that exist and change the PRM, values that validate."""
    if "ablation" not in self.config:
      return
    sections = {s for name in self.plan("prm") for s in STAGES[name].sections}
    for text in self.config.ablation.variants:
      overrides = config_lib.parse_variant(text)
      if not overrides:
        raise config_lib.ConfigError(f"ablation.variants: {text!r} names no KEY=VALUE.")
      for key in overrides:
        if key.split(".")[0] not in sections:
          raise config_lib.ConfigError(
              f"ablation variant {text!r}: {key!r} does not change the PRM (it reads the "
              f"sections {sorted(sections)}).")
      try:
        config_lib.validate(with_overrides(self.config, overrides), list(STAGES))
      except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"ablation variant {text!r}: {e}") from e

  def run(self, target: str | None = None) -> Any:
    """Runs ``target`` (default: ``config.stage``) and whatever it is missing."""
    self.validate(target)
    target = self.target(target)
    order = self.plan(target)
    t0 = time.time()
    for name in order:
      if self.is_done(name):
        self.log(f"{name}: up to date ({self.directory(name)})")
        continue
      if name not in BEFORE_CHECKS:
        self.check_lengths()
        self.check_memory()
      self._run_stage(name)
    self.log(f"{target}: done in {fmt_duration(time.time() - t0)} -> {self.directory(target)}")
    return self.load(target)

  def variant(self, stage: str, overrides: dict[str, Any]) -> tuple[Any, dict]:
    """The artifact of ``stage`` under this config with ``overrides`` (dotted keys),
    and its stage record: reused if that identity is done, else run with whatever it
    is missing (in this workdir, like any other artifact)."""
    if not overrides:
      return self.load(stage), artifacts.read_stage(self.directory(stage))
    config = with_overrides(self.config, overrides)
    sub = Pipeline(config, self.workdir, self.log, point_latest=False)
    self.log(f"variant {overrides}: {stage} -> {sub.directory(stage)}")
    artifact = sub.run(stage)
    return artifact, artifacts.read_stage(sub.directory(stage))

  def check_memory(self) -> None:
    """The memory planner: parameters, KV caches and logits per device of this process's
    sampling mesh (--mesh) must fit, before a model stage starts."""
    if self._memory_checked:
      return
    mesh = parallel.local_mesh()
    try:
      plan = memory.plan(config_lib.memory_uses(self.config), data_shards=mesh.shape["data"],
                         model_shards=mesh.shape["model"])
      memory.check(plan)
    except ValueError as e:  # OutOfMemoryPlan, or a model that does not split over 'model'
      raise config_lib.ConfigError(f"memory per device: {e}") from None
    self.log(f"memory per device ({mesh.shape['data']} x {mesh.shape['model']} mesh): "
             f"{plan.total / memory.GIB:.2f} GiB ({plan.describe()})")
    self._memory_checked = True

  def check_lengths(self) -> None:
    """Token lengths against the config (needs the tokenizer): before any later stage."""
    if self._lengths_checked:
      return
    data = self.load("data")
    if self.resolve("policy") == "hf_policy":
      c = self.config
      h = c.hf_policy
      tok = artifacts.hf_tokenizer(h.path, step_delimiter=h.step_delimiter, chat=h.chat,
                                   system=h.system)
      auc = c.verifier_eval.auc_problems if "verifier_eval" in c else 0
      longest = config_lib.validate_lengths(
          c, data.task, tok, {"test": data.problems("test", c.test_problems + auc)},
          context=config_lib.hf_model_config(h, "hf_policy").max_seq_len)
      self.log(f"lengths: longest prompt {longest['prompt']} tokens (the imported policy's "
               f"chat prompt), reference solution {longest['solution']}")
    else:
      longest = config_lib.validate_lengths(
          self.config, data.task, self.load("tokenizer"),
          {"train": data.problems("train"), "test": data.problems("test")})
      self.log(f"lengths: longest prompt {longest['prompt']}, solution {longest['solution']} "
               f"(with EOS), training row {longest['row']} tokens")
    self._lengths_checked = True

  def load(self, name: str) -> Any:
    """The loaded artifact of ``name`` (it must be done)."""
    if name not in self._loaded:
      if not self.is_done(name):
        raise artifacts.ArtifactError(
            f"stage {name!r} has no finished artifact {self.directory(name)}; run it first.")
      self._loaded[name] = STAGES[name].load(self.stage_dir(name), self.key(name))
    return self._loaded[name]

  def _run_stage(self, name: str) -> None:
    stage = STAGES[name]
    out = self.stage_dir(name)
    self._log_change(name)
    key = self.key(name)
    previous = artifacts.read_stage(out.dir)
    resumed = previous is not None
    record = {"stage": name, "id": out.identity, "key": key, "status": "running",
              "provenance": artifacts.provenance(), "doc": stage.doc}
    if previous and "started" in previous:
      record["started"] = previous["started"]
    record.setdefault("started", record["provenance"]["created"])
    store.write_json(out.path(artifacts.STAGE_FILE), record)
    self.log(f"{name}: {'resuming' if resumed else 'running'} -> {out.dir}")
    inputs = {role: self.load(s) for role, s in self.inputs_of(name).items() if s}
    inputs.update({i: self.load(self.resolve(i)) for i in stage.optional
                   if key["optional"][i] is not None})
    sections = ml_collections.ConfigDict({s: self.config[s] for s in stage.sections})
    sections.lock()
    t0 = time.time()
    host.free_compiled_code()
    summary = stage.run(Context(config=sections, inputs=inputs, out=out, log=self.log,
                                variant=self.variant))
    parallel.barrier(f"{name}/outputs")
    missing = [o for o in stage.outputs if not os.path.exists(out.path(o))]
    if missing:
      raise artifacts.ArtifactError(f"stage {name!r} did not write {missing} in {out.dir}.")
    record.update(status="done", summary=summary, seconds=time.time() - t0,
                  finished=artifacts.provenance()["created"])
    store.write_json(out.path(artifacts.STAGE_FILE), record)
    self._point_latest(name)
    parallel.barrier(f"{name}/done")
    self.log(f"{name}: done in {fmt_duration(time.time() - t0)}")

  def _point_latest(self, name: str) -> None:
    if not parallel.is_primary() or not self.point_latest:
      return
    link = os.path.join(self.workdir, name, "latest")
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
      os.remove(tmp)
    os.symlink(self.identity(name), tmp)
    os.replace(tmp, link)

  def _log_change(self, name: str) -> None:
    """Says why a new artifact is made when the stage has an earlier one."""
    link = os.path.join(self.workdir, name, "latest")
    if not os.path.lexists(link):
      return
    old = artifacts.read_stage(os.path.realpath(link))
    if not old or old.get("id") == self.identity(name):
      return
    before, after = flatten(old.get("key", {})), flatten(self.key(name))
    changed = [f"{k}: {before.get(k, '(none)')!r} -> {after.get(k, '(none)')!r}"
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    self.log(f"{name}: differs from its latest artifact {old.get('id')} "
             f"({'; '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}); a new artifact "
             "is made, the old one is kept")
