"""Decode utilization: of the row-steps a sampling call pays (each decode step costs every
row of the batch), the share that made a token (an alive row). A static batch runs until its
longest row ends; continuous batching (:mod:`ttc_jax.sampling.serving`) refills finished
rows. The callers that read their outputs back anyway (``solutions.generate``, the MC
rollouts, the revision chains) add their calls here; the pipeline reads the meter per stage
(its ``stage.json``: ``decode``)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Meter:
  row_steps: int = 0  # decode steps x rows of every call counted
  alive_steps: int = 0  # of those, the ones that made a token
  calls: int = 0
  # Of the rest, the row-steps of rows that had nothing to do in the call (padding to a
  # compiled batch size, rows left out of a call), as record_call counts them (the tree
  # search, the revision chains' static steps); the others are rows that had ended while the
  # call ran on (and any padding a caller does not report).
  idle_steps: int = 0

  def add(self, row_steps: int, alive_steps: int, calls: int = 1, idle_steps: int = 0) -> None:
    if not 0 <= alive_steps <= row_steps:
      raise ValueError(f"alive_steps={alive_steps} must lie in [0, row_steps={row_steps}].")
    if not 0 <= idle_steps <= row_steps - alive_steps:
      raise ValueError(f"idle_steps={idle_steps} must lie in [0, row_steps - alive_steps="
                       f"{row_steps - alive_steps}].")
    self.row_steps += int(row_steps)
    self.alive_steps += int(alive_steps)
    self.calls += int(calls)
    self.idle_steps += int(idle_steps)

  @property
  def utilization(self) -> float | None:
    return self.alive_steps / self.row_steps if self.row_steps else None

  @property
  def ended_share(self) -> float | None:
    """The share of the row-steps paid by rows that had ended (not idle ones)."""
    if not self.row_steps:
      return None
    return (self.row_steps - self.alive_steps - self.idle_steps) / self.row_steps

  def to_json(self) -> dict:
    return {"row_steps": self.row_steps, "alive_steps": self.alive_steps, "calls": self.calls,
            "utilization": self.utilization, "idle_steps": self.idle_steps,
            "ended_share": self.ended_share}


_METER = Meter()


def record(row_steps: int, alive_steps: int, calls: int = 1, idle_steps: int = 0) -> None:
  """Counts calls of this process (see the module docstring)."""
  _METER.add(row_steps, alive_steps, calls, idle_steps)


def record_call(out, active) -> None:
  """Counts one sampling call run to its rows' ends (not shrinking): ``out`` its
  SampleOutput, ``active`` (B,) the rows it sampled; the others are idle for each of its
  steps."""
  active = np.asarray(active, bool)
  record(int(out.row_steps), int(np.asarray(out.lengths)[active].sum()),
         idle_steps=int(out.steps) * int((~active).sum()))


def take() -> Meter:
  """What was counted since the last take (and starts a new count)."""
  global _METER
  out, _METER = _METER, Meter()
  return out
