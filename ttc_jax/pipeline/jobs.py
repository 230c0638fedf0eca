"""Runs a target's stages as concurrent processes: independent stages side by side.

The stages form a graph (each reads its inputs' artifacts), so after the policy the
MC labels and the difficulty samples, then the PRM and the ORM, then the search
sweep, the verifier evaluation and the ablation can run at the same time. On a CPU
host one JAX process keeps about 1.3-1.6 cores busy (decode is a chain of small
kernels; XLA compiles on one thread), so two stage processes on 2 cores finish the
study in about two thirds of the time of one (measured: README, "The study").

Each stage runs in a fresh ``spawn`` child process that runs ``Pipeline.run(stage)``
(its inputs are finished, so it only loads them); a stage starts when all its
inputs are finished, the one on the longest remaining path (by ``Stage.cost_s``) first.
A child that fails stops the others (their work resumes on the next run) and the
parent raises :class:`StageFailed` naming the stage. Artifacts, identities and
resumption are those of the one-process run: only the order in time differs.

For accelerators use one job (a GPU or TPU serves one process well, and several
processes would each claim its memory); ``--jobs`` is meant for CPU hosts.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import connection
import os
import signal
import sys
import time
from typing import Any, Callable, Sequence

from absl import logging

from ttc_jax import host
from ttc_jax import progress
from ttc_jax import tasks
from ttc_jax.pipeline import runner
from ttc_jax.pipeline.stages import BEFORE_CHECKS
from ttc_jax.pipeline.stages import STAGES
from ttc_jax.progress import fmt_duration

class StageFailed(RuntimeError):
  """A stage's process exited with an error (its log says why)."""


class _Prefix:
  """Prefixes a stage process's log lines with the stage name (lines of concurrent
  stages interleave)."""

  def __init__(self, stage: str):
    self.prefix = f"[{stage}] "

  def filter(self, record) -> bool:
    if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
      record.msg = self.prefix + record.msg
    return True


def _exit_with_parent(parent: int) -> None:
  """This process gets SIGTERM when its parent dies (Linux), however it dies: a ``kill -9``
  of a --jobs run leaves no stage process writing its workdir without its lock."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
  except (OSError, AttributeError):  # not Linux: the parent's finally block stops it
    return
  if os.getppid() != parent:  # the parent died before prctl: no signal will come
    os.kill(os.getpid(), signal.SIGTERM)


def _child(config, workdir: str, stage: str, task_modules: Sequence[str],
           cache_dir: str | None, lengths_checked: bool, device_per_core: bool,
           parent: int) -> None:
  """Runs one stage in a spawned process (module-level: spawn pickles it by name)."""
  _exit_with_parent(parent)
  if device_per_core:
    host.cpu_device_per_core()  # before JAX starts its backends
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  logging.get_absl_logger().addFilter(_Prefix(stage))
  progress.quiet_library_logs()
  tasks.import_modules(task_modules)
  host.enable_compilation_cache(cache_dir)
  try:
    runner.Pipeline(config, workdir, lengths_checked=lengths_checked, locked=True).run(stage)
  except runner.KNOWN_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(1)


def _ancestors(deps: dict[str, list[str]], target: str) -> set[str]:
  out, todo = set(), list(deps[target])
  while todo:
    s = todo.pop()
    if s not in out:
      out.add(s)
      todo.extend(deps[s])
  return out


def path_cost(deps: dict[str, list[str]], name: str, target: str) -> int:
  """The costliest chain of stages from ``name`` to ``target`` (both included), over
  ``deps`` (stage -> the stages it reads)."""
  if name == target:
    return STAGES[name].cost_s
  above = _ancestors(deps, target)
  after = [s for s, ins in deps.items() if name in ins and (s == target or s in above)]
  return STAGES[name].cost_s + max((path_cost(deps, s, target) for s in after), default=0)


def run(pipeline, target: str, jobs: int, *, task_modules: Sequence[str] = (),
        cache_dir: str | None = None, log: Callable[[str], None] = logging.info,
        poll_s: float | None = None, redo: Sequence[str] = ()) -> Any:
  """Runs ``target`` and what it is missing with up to ``jobs`` stage processes at once;
  returns the loaded artifact of ``target`` (like :meth:`Pipeline.run`). The workdir's
  lock is held here; the stage processes write under it and die with this process."""
  if jobs < 1:
    raise ValueError(f"jobs={jobs}: expected at least 1 stage process at a time.")
  pipeline.single_process = True
  pipeline.validate(target)
  target = pipeline.target(target)
  with pipeline.lock():
    return _run(pipeline, target, jobs, task_modules, cache_dir, log, poll_s, tuple(redo))


def _run(pipeline, target, jobs, task_modules, cache_dir, log, poll_s, redo) -> Any:
  order = pipeline.plan(target)
  pipeline.redo(redo, order)
  deps = {n: [s for s in pipeline.inputs_of(n).values() if s] for n in order}
  todo = []
  for name in order:
    if pipeline.is_done(name):
      pipeline.up_to_date(name)
    else:
      todo.append(name)
  ctx = multiprocessing.get_context("spawn")
  running: dict[int, tuple[str, Any, float]] = {}
  t0 = time.time()
  try:
    while todo or running:
      # A stage found finished whose input has since been recomputed with other content (its
      # artifact was missing: --redo, or deleted) is stale now: it runs again.
      busy = {r[0] for r in running.values()}
      todo = [n for n in order if n in todo or (n not in busy and not pipeline.is_done(n))]
      ready = [n for n in todo if all(pipeline.is_done(i) for i in deps[n])]
      ready.sort(key=lambda n: (-path_cost(deps, n, target), order.index(n)))
      starting = ready[:max(0, jobs - len(running))]
      for name in starting:
        checked = name not in BEFORE_CHECKS
        per_core = STAGES[name].trains
        if STAGES[name].inputs:
          pipeline.check_references()  # once, here, instead of in every stage process
        if checked:
          pipeline.check_lengths()
        proc = ctx.Process(target=_child, name=f"ttc_jax-{name}",
                           args=(pipeline.config, pipeline.workdir, name, tuple(task_modules),
                                 cache_dir, checked, per_core, os.getpid()))
        proc.start()
        running[proc.sentinel] = (name, proc, time.time())
        todo.remove(name)
        others = [r[0] for r in running.values() if r[0] != name]
        log(f"{name}: started in process {proc.pid}"
            + (f" (beside {', '.join(others)})" if others else "")
            + (" on one XLA CPU device per core" if per_core else ""))
      if not running:
        raise StageFailed(f"stages {todo} cannot start: their inputs are not finished.")
      for sentinel in connection.wait(list(running), timeout=poll_s):
        name, proc, started = running.pop(sentinel)
        proc.join()
        if proc.exitcode != 0 or not pipeline.is_done(name):
          raise StageFailed(
              f"stage {name!r} failed in process {proc.pid} (exit code {proc.exitcode}); its "
              f"log is above. Finished stages are kept; rerun to resume.")
        log(f"{name}: finished in {fmt_duration(time.time() - started)}")
  finally:
    for name, proc, _ in running.values():
      if proc.is_alive():
        log(f"{name}: stopping process {proc.pid}")
        proc.terminate()
        proc.join()
  log(f"{target}: done in {fmt_duration(time.time() - t0)} ({jobs} stage processes at a time) "
      f"-> {pipeline.directory(target)}")
  return pipeline.load(target)

