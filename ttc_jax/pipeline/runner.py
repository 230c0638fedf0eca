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
import shutil
import time
from typing import Any, Callable

from absl import logging
import ml_collections

from ttc_jax import host
from ttc_jax import parallel
from ttc_jax import tasks
from ttc_jax.models import memory
from ttc_jax.models.checkpoints import CheckpointError
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline import store
from ttc_jax.pipeline import workdir as workdir_lib
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stages import ADDED_KEYS
from ttc_jax.pipeline.stages import BEFORE_CHECKS
from ttc_jax.pipeline.stages import CHECKS
from ttc_jax.pipeline.stages import SPEED_ONLY
from ttc_jax.pipeline.stages import STAGES
from ttc_jax.training import trainer
from ttc_jax.progress import fmt_duration
from ttc_jax.sampling import utilization


def _section(config: ml_collections.ConfigDict, name: str) -> Any:
  value = config[name]
  return value.to_dict() if hasattr(value, "to_dict") else value


def _drop_speed_only(obj: Any, path: str = "") -> Any:
  """A config slice without what results do not depend on: SPEED_ONLY keys, and
  ADDED_KEYS at their defaults."""
  if not isinstance(obj, dict):
    return obj
  out = {}
  for k, v in obj.items():
    p = f"{path}.{k}" if path else k
    if any(fnmatch.fnmatchcase(p, pattern) for pattern in SPEED_ONLY):
      continue
    if any(fnmatch.fnmatchcase(p, pattern) and v == default
           for pattern, default in ADDED_KEYS.items()):
      continue
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
                CheckpointError, workdir_lib.WorkdirBusy, trainer.TooFewRows)


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
               lengths_checked: bool = False, locked: bool = False):
    if not workdir:
      raise config_lib.ConfigError("--workdir is required (the directory of the study's "
                                   "artifacts).")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise config_lib.ConfigError(f"--workdir={workdir}: not a directory.")
    self.config, self.workdir, self.log = config, workdir, log
    self.point_latest = point_latest  # False for variants: 'latest' stays the study's
    # True in a stage process of pipeline.jobs: its parent holds the workdir's lock.
    self._locked = locked
    # True in the parent of pipeline.jobs: one process (--jobs excludes --distributed) that
    # starts no JAX backend, so it does not ask JAX which process it is.
    self.single_process = False
    self._ids: dict[str, str] = {}
    self._loaded: dict[str, Any] = {}
    # True when the caller checked the token lengths of this config (a stage process
    # of pipeline.jobs: its parent did, once).
    self._lengths_checked = lengths_checked
    self._memory_checked = False  # per process: its own devices and --mesh
    self._references_checked = lengths_checked
    self.task = None

  # ------------------------------------------------------------------ roles
  def resolve(self, role: str) -> str | None:
    """The stage that fills ``role`` in this experiment (its ``stages`` config: e.g.
    'policy' -> 'hf_policy'; None: left out); default the stage of that name."""
    return config_lib.filled_by(self.config, role)

  def inputs_of(self, name: str) -> dict[str, str | None]:
    """{role: the stage filling it, or None} of stage ``name``'s inputs (those this config
    reads: :attr:`Stage.reads`)."""
    stage = STAGES[name]
    return {role: self.resolve(role) for role in stage.inputs
            if stage.reads is None or stage.reads(self.config, role)}

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
    roles = {role: self.resolve(role) for role in (self.config.get("stages") or {})}
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

  def record(self, name: str) -> dict | None:
    """The stage record of ``name``'s artifact (None: never started); a damaged or edited
    finished record is an ArtifactError that says how to recompute it."""
    try:
      rec = artifacts.read_stage(self.directory(name))
      if rec and rec.get("status") == "done":
        artifacts.check_record(rec, self.directory(name))
    except (store.StoreError, artifacts.ArtifactError) as e:
      raise self._damaged(name, e) from None
    return rec

  def _damaged(self, name: str, e: Exception) -> artifacts.ArtifactError:
    return artifacts.ArtifactError(
        f"the {name} artifact cannot be trusted: {e}. Rerun with --redo={name} to compute "
        "it again (the artifacts that read it are recomputed if it comes out different).")

  def _content(self, name: str) -> str | None:
    """The sealed content digest of ``name``'s finished artifact (None: not finished, or
    made before artifacts were sealed)."""
    rec = self.record(name)
    if not rec or rec.get("status") != "done":
      return None
    return rec.get("content")

  def _read_inputs(self, name: str) -> dict[str, str]:
    """{role: stage} of the artifacts ``name`` reads: its inputs, and its optional inputs
    when finished."""
    read = {role: s for role, s in self.inputs_of(name).items() if s}
    for role in STAGES[name].optional:
      s = self.resolve(role)
      if s and self.is_done(s):
        read[role] = s
    return read

  def changed_inputs(self, name: str, rec: dict | None) -> list[str]:
    """The inputs of ``name`` whose content differs from what ``rec`` (its artifact's
    record) says it read: an input recomputed since (``--redo``) that came out different."""
    recorded = (rec or {}).get("input_content") or {}
    out = []
    for role, s in self._read_inputs(name).items():
      now = self._content(s)
      if recorded.get(role) is not None and now is not None and now != recorded[role]:
        out.append(role)
    return out

  def is_done(self, name: str) -> bool:
    rec = self.record(name)
    if not (rec and rec.get("status") == "done" and rec.get("id") == self.identity(name)):
      return False
    return not self.changed_inputs(name, rec)

  def verify(self, name: str, seen: set[str] | None = None) -> None:
    """``name``'s finished artifact and every artifact it was computed from hold the bytes
    their stages wrote (:func:`ttc_jax.pipeline.artifacts.verify`); else an ArtifactError
    naming the file and the stage to redo."""
    seen = set() if seen is None else seen
    if name in seen:
      return
    seen.add(name)
    for s in self._read_inputs(name).values():
      self.verify(s, seen)
    rec = self.record(name)
    try:
      artifacts.verify(rec or {}, self.directory(name))
    except artifacts.ArtifactError as e:
      raise self._damaged(name, e) from None

  # ------------------------------------------------------------------- run
  def sections(self, target: str) -> list[str]:
    """The config sections the stages of ``target``'s plan read."""
    return sorted({s for name in self.plan(target) for s in STAGES[name].sections})

  def training_devices(self) -> int:
    """The devices the trainer splits a batch over (``trainer.train``'s default mesh: every
    device): this process's, or for the parent of a --jobs run (which starts no JAX
    backend) those its training stage processes will have."""
    if self.single_process:
      return host.requested_cpu_devices()
    import jax  # pylint: disable=g-import-not-at-top
    return jax.device_count()

  def validate(self, target: str | None = None) -> None:
    """Everything that needs no data, for running ``target`` (default ``config.stage``):
    the sections its stages read, every error at once; nothing has been written when
    this raises."""
    errors = config_lib.Errors()
    sections = None
    with errors:
      self.validate_roles(target)
      sections = self.sections(self.target(target))
    with errors:
      self.task = config_lib.validate(self.config, list(STAGES), CHECKS, sections,
                                      self.training_devices())
    if sections is not None and "ablation" in sections and not errors.messages:
      with errors:  # a variant's own errors (the config's are above)
        self._validate_variants()
    errors.raise_all()

  def _validate_variants(self) -> None:
    """The ablation's variants: keys that exist and change the PRM, values that validate."""
    sections = self.sections("prm")
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
        config_lib.validate(with_overrides(self.config, overrides), list(STAGES), CHECKS,
                            sections, self.training_devices())
      except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"ablation variant {text!r}: {e}") from e

  def run(self, target: str | None = None, redo: tuple[str, ...] = ()) -> Any:
    """Runs ``target`` (default: ``config.stage``) and whatever it is missing; ``redo``:
    stages (or roles) of its plan whose artifacts are removed and computed again."""
    self.validate(target)
    target = self.target(target)
    order = self.plan(target)
    with self.lock():
      self.redo(redo, order)
      t0 = time.time()
      for name in order:
        if self.is_done(name):
          self.up_to_date(name)
          continue
        if STAGES[name].inputs:  # past the data (stages that read nothing come first)
          self.check_references()
        if name not in BEFORE_CHECKS:
          self.check_lengths()
          self.check_memory()
        self._run_stage(name)
      self.log(f"{target}: done in {fmt_duration(time.time() - t0)} -> "
               f"{self.directory(target)}")
      return self.load(target)

  def lock(self) -> workdir_lib.WorkdirLock | _NoLock:
    """The workdir's lock for this run (:mod:`ttc_jax.pipeline.workdir`): taken by the
    process that writes (a stage process of a --jobs run writes under its parent's)."""
    if self._locked or not self._primary():
      return _NoLock()
    return _FirstLock(self)

  def redo(self, names: tuple[str, ...], order: list[str]) -> None:
    """Removes the artifacts of ``names`` (stages or roles in ``order``) so that they are
    computed again; the artifacts that read one are recomputed when it comes out different
    (:meth:`changed_inputs`)."""
    for role in names:
      name = self.resolve(role) or role
      if name not in order:
        raise config_lib.ConfigError(f"--redo={role}: not a stage of this run (it runs "
                                     f"{order}).")
      path = self.directory(name)
      if os.path.lexists(path) and self._primary():
        shutil.rmtree(path)
        self.log(f"{name}: removed {path} (--redo): it is computed again")

  def up_to_date(self, name: str) -> None:
    """Says that ``name`` is reused, and repairs its ``latest`` link where a run was killed
    between finishing the artifact and pointing the link at it."""
    self.log(f"{name}: up to date ({self.directory(name)})")
    if self._point_latest(name, repair=True):
      self.log(f"{name}: {os.path.join(self.workdir, name, 'latest')} repaired: it now points "
               "at this artifact, the newest finished one (a run was stopped before it "
               "could point it)")

  def variant(self, stage: str, overrides: dict[str, Any]) -> tuple[Any, dict]:
    """The artifact of ``stage`` under this config with ``overrides`` (dotted keys),
    and its stage record: reused if that identity is done, else run with whatever it
    is missing (in this workdir, like any other artifact)."""
    if not overrides:
      return self.load(stage), artifacts.read_stage(self.directory(stage))
    config = with_overrides(self.config, overrides)
    sub = Pipeline(config, self.workdir, self.log, point_latest=False, locked=self._locked,
                   lengths_checked=True)  # a PRM variant: the same task and lengths
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
      held = {role: STAGES[self.resolve(role)].held(self.config) if self.resolve(role) else None
              for role in ("policy", "prm")}
      plan = memory.plan(config_lib.memory_uses(self.config, held["policy"], held["prm"]),
                         data_shards=mesh.shape["data"], model_shards=mesh.shape["model"])
      memory.check(plan)
    except ValueError as e:  # OutOfMemoryPlan, or a model that does not split over 'model'
      raise config_lib.ConfigError(f"memory per device: {e}") from None
    self.log(f"memory per device ({mesh.shape['data']} x {mesh.shape['model']} mesh): "
             f"{plan.total / memory.GIB:.2f} GiB ({plan.describe()})")
    self._memory_checked = True

  def check_references(self) -> None:
    """Every problem the run reads has a usable reference (an answer, and a solution that
    grades correct against it): before any stage past the data."""
    if self._references_checked:
      return
    data = self.load("data")
    c, plan = self.config, set(self.plan(self.target()))
    problems = []
    if any(STAGES[name].reads_train for name in plan):
      problems += data.problems("train")
    if "test_problems" in c:
      auc = c.verifier_eval.auc_problems if "verifier_eval" in plan else 0
      problems += data.problems("test", c.test_problems + auc)
    bad = tasks.unusable_references(data.task, problems)
    if bad:
      shown = "; ".join(f"{p.uid}: {why}" for p, why in bad[:3])
      raise config_lib.ConfigError(
          f"task {data.task.name!r}: {len(bad)} of the {len(problems)} problems this run reads "
          f"have no usable reference ({shown}{'; ...' if len(bad) > 3 else ''}): every sample "
          "of those would be graded wrong. Fix the task's data (or its grader).")
    self.log(f"references: the {len(problems)} problems this run reads grade correct against "
             "their own solutions")
    self._references_checked = True

  def check_lengths(self) -> None:
    """Token lengths against the config (needs the tokenizer): before any later stage."""
    if self._lengths_checked:
      return
    data = self.load("data")
    self.log(STAGES[self.resolve("policy")].lengths(self.config, data, self.load))
    self._lengths_checked = True

  def load(self, name: str) -> Any:
    """The loaded artifact of ``name`` (it must be done), after :meth:`verify`."""
    if name not in self._loaded:
      if not self.is_done(name):
        raise artifacts.ArtifactError(
            f"stage {name!r} has no finished artifact {self.directory(name)}; run it first.")
      self.verify(name)
      try:
        self._loaded[name] = STAGES[name].load(self.stage_dir(name), self.key(name))
      except (config_lib.ConfigError, MemoryError, KeyboardInterrupt):
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise self._damaged(name, f"{type(e).__name__}: {e}") from e
    return self._loaded[name]

  def _run_stage(self, name: str) -> None:
    stage = STAGES[name]
    out = self.stage_dir(name)
    self._log_change(name)
    key = self.key(name)
    try:
      previous = artifacts.read_stage(out.dir)
    except store.StoreError as e:  # an unfinished artifact's record: start it over
      self.log(f"{name}: its record is damaged ({e}); starting the artifact over")
      previous = None
      self._reset(out.dir)
    changed = self.changed_inputs(name, previous)
    if changed:
      self.log(f"{name}: its input(s) {changed} were computed again and differ from what "
               "this artifact read; starting it over")
      previous = None
      self._reset(out.dir)
    resumed = previous is not None
    inputs = {role: self.load(s) for role, s in self.inputs_of(name).items() if s}
    inputs.update({i: self.load(self.resolve(i)) for i in stage.optional
                   if key["optional"][i] is not None})
    record = {"stage": name, "id": out.identity, "key": key, "status": "running",
              "provenance": artifacts.provenance(), "doc": stage.doc,
              "input_content": {role: self._content(s)
                                for role, s in self._read_inputs(name).items()}}
    if previous and "started" in previous:
      record["started"] = previous["started"]
    record.setdefault("started", record["provenance"]["created"])
    store.write_json(out.path(artifacts.STAGE_FILE), record)
    self.log(f"{name}: {'resuming' if resumed else 'running'} -> {out.dir}")
    sections = ml_collections.ConfigDict({s: self.config[s] for s in stage.sections})
    sections.lock()
    t0 = time.time()
    host.free_compiled_code()
    host.hold(f"stage:{name}")
    utilization.take()  # the stage's own decode calls, compiles and training runs from here
    host.compile_meter().take()
    trainer.THROUGHPUT.clear()
    summary = stage.run(Context(config=sections, inputs=inputs, out=out, log=self.log,
                                variant=self.variant))
    parallel.barrier(f"{name}/outputs")
    missing = [o for o in stage.outputs if not os.path.exists(out.path(o))]
    if missing:
      raise artifacts.ArtifactError(f"stage {name!r} did not write {missing} in {out.dir}.")
    record.update(status="done", summary=summary, seconds=time.time() - t0,
                  finished=artifacts.provenance()["created"])
    # This run's work (a resumed stage: what was left): its decode utilization and what it
    # compiled (programs built or loaded from the persistent cache, seconds).
    decode = utilization.take()
    if decode.row_steps:
      record["decode"] = decode.to_json()
    record["compile"] = host.compile_meter().take()
    if trainer.THROUGHPUT:  # its share of the machine's matmul peak: make bench measures it
      record["train"] = list(trainer.THROUGHPUT)
    if parallel.is_primary():
      record = artifacts.seal(record, out.dir)
    store.write_json(out.path(artifacts.STAGE_FILE), record)
    self._point_latest(name)
    parallel.barrier(f"{name}/done")
    comp = record["compile"]
    self.log(f"{name}: done in {fmt_duration(time.time() - t0)}; compiled {comp['programs']} "
             f"programs ({comp['cache_hits']} from the cache) in {comp['compile_s']:.1f} s"
             + (f"; decode utilization {decode.utilization:.3f} over {decode.calls} calls"
                if decode.row_steps else ""))

  def _primary(self) -> bool:
    return self.single_process or parallel.is_primary()

  def _reset(self, path: str) -> None:
    if self._primary() and os.path.isdir(path):
      shutil.rmtree(path)

  def _point_latest(self, name: str, repair: bool = False) -> bool:
    """Points WORKDIR/<name>/latest at this config's artifact of ``name``; with ``repair``
    only where the link is missing or on an artifact that finished before this one.
    Returns whether the link changed."""
    if not self.point_latest or not self._primary():
      return False
    link = os.path.join(self.workdir, name, "latest")
    if repair:
      if os.path.realpath(link) == os.path.realpath(self.directory(name)):
        return False
      mine = artifacts.read_stage(self.directory(name)) or {}
      try:
        current = artifacts.read_stage(os.path.realpath(link)) if os.path.exists(link) else None
      except store.StoreError:
        current = None
      if (current and current.get("status") == "done"
          and current.get("finished", "") >= mine.get("finished", "")):
        return False
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
      os.remove(tmp)
    os.symlink(self.identity(name), tmp)
    os.replace(tmp, link)
    return True

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


class _NoLock:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return None


class _FirstLock:
  """The workdir lock; the first time this process takes it, what killed runs left behind
  is removed (nothing else writes the workdir while it is held)."""

  def __init__(self, pipeline: Pipeline):
    self.pipeline = pipeline

  def __enter__(self):
    first = not workdir_lib.holds(self.pipeline.workdir)
    workdir_lib.acquire(self.pipeline.workdir)
    if first:
      removed = workdir_lib.remove_stale_temporaries(self.pipeline.workdir)
      if removed:
        self.pipeline.log(f"removed {len(removed)} temporary file(s) of a stopped run "
                          f"(e.g. {removed[0]})")
    return self

  def __exit__(self, *exc):
    workdir_lib.release(self.pipeline.workdir)
