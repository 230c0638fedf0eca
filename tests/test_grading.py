"""The grader never raises: a call its worker cannot answer (a worker that cannot start,
never becomes ready, dies or whose pipe breaks; a comparison that raises) is graded
incorrect and counted in ``errors``, and the next call grades normally.

Nothing here depends on timing: the failures are injected (``grading._spawn`` replaced, or
a comparison that exits or raises on request), and a worker that never becomes ready never
answers at all, so the small start limits the tests set decide only when it is given up,
never whether.
"""

import errno
import multiprocessing
import os
import time

import pytest

from ttc_jax.tasks import grading
from ttc_jax.tasks.grading import Grader


def compare(gold, pred):
  """Equal strings; the worker exits on the prediction 'die', and raises on 'raise'."""
  if pred == "die":
    os._exit(3)
  if pred == "raise":
    raise ValueError("no verdict here")
  return gold == pred


def spin(gold, pred):
  """Never answers, burning CPU (a start that never becomes ready)."""
  while True:
    pass


def sleep(gold, pred):
  """Never answers, using no CPU (a worker blocked, or never scheduled)."""
  while True:
    time.sleep(60)


@pytest.fixture
def grader():
  g = Grader(time_limit_s=30.0, function=compare)
  yield g
  g.close()


def _recovers(g, errors):
  """A fresh worker grades again, and the failed calls' verdicts were not cached."""
  assert g.grade("a", "a") is True
  assert g.grade("a", "b") is False
  assert (g.errors, g.timeouts) == (errors, 0)


def test_a_worker_that_cannot_start(grader, monkeypatch):
  def fail(ctx, function):
    raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
  monkeypatch.setattr(grading, "_spawn", fail)
  assert grader.grade("a", "a") is False
  assert grader.grade("a", "a") is False
  assert (grader.errors, grader.timeouts) == (2, 0)
  assert "Resource temporarily unavailable" in grader.last_error
  monkeypatch.undo()
  _recovers(grader, errors=2)


@pytest.mark.parametrize("never_ready, limits", [
    (spin, dict(start_limit_s=0.2)),  # over its CPU limit
    (sleep, dict(start_backstop_s=0.2)),  # over the wall-clock backstop
], ids=["spinning", "blocked"])
def test_a_worker_that_never_becomes_ready(grader, monkeypatch, never_ready, limits):
  spawn = grading._spawn
  monkeypatch.setattr(grading, "_spawn", lambda ctx, function: spawn(ctx, never_ready))
  defaults = {name: getattr(grader, name) for name in limits}
  for name, value in limits.items():
    setattr(grader, name, value)
  assert grader.grade("a", "a") is False
  assert grader.errors == 1 and grader.timeouts == 0
  assert "did not become ready" in grader.last_error
  assert grader._proc is None  # the worker that never answered was killed
  monkeypatch.undo()
  for name, value in defaults.items():
    setattr(grader, name, value)
  _recovers(grader, errors=1)


def test_a_worker_that_dies_during_a_call(grader):
  assert grader.grade("x", "x") is True
  assert grader.grade("a", "die") is False
  assert grader.errors == 1 and "EOFError" in grader.last_error
  assert grader.grade("a", "die") is False  # not cached: the worker died again
  assert grader.errors == 2
  _recovers(grader, errors=2)


def test_a_broken_pipe(grader):
  """The worker's end of the pipe closed between the liveness check and the send."""
  assert grader.grade("x", "x") is True
  ours, theirs = multiprocessing.get_context("spawn").Pipe()
  theirs.close()
  grader._conn.close()
  grader._conn = ours
  assert grader.grade("a", "a") is False
  assert grader.errors == 1 and "BrokenPipeError" in grader.last_error
  _recovers(grader, errors=1)


def test_a_comparison_that_raises(grader):
  assert grader.grade("x", "x") is True
  pid = grader._proc.pid
  assert grader.grade("a", "raise") is False
  assert grader.errors == 1 and "ValueError: no verdict here" in grader.last_error
  _recovers(grader, errors=1)
  assert grader._proc.pid == pid  # the worker itself was fine


def test_answers_that_are_not_strings(grader):
  assert grader.grade(1003, 1003) is True  # e.g. GSM8K answers parsed as numbers
  assert grader.grade(1003, "1004") is False
  assert grader.errors == 0


def test_a_function_the_worker_cannot_receive():
  """The worker gets its comparison pickled: a lambda is refused when the grader is made,
  not graded incorrect on every call."""
  with pytest.raises(TypeError, match="module-level function"):
    Grader(function=lambda gold, pred: gold == pred)
