"""The training loop shared by the policy (LM objective), the value-head verifiers (value
objective) and the LM-head verifiers (implicit-PRM and DPO objectives on the implicit reward).

* optax: AdamW with linear warmup + cosine decay and global-norm clipping; weight
  decay on matrices only.
* One jitted, donated train step over pure pytrees (``nnx.split`` outside,
  ``nnx.merge`` inside); the batch is sharded over the mesh ``'data'`` axis,
  parameters and optimizer state are replicated.
* Data order is a pure function of (seed, step) (see ``training.data``).
* orbax ``CheckpointManager`` under ``<out_dir>/checkpoints`` holds params,
  optimizer state, step and data position, saved every ``checkpoint_every``
  steps and at the end. A rerun restores the latest complete checkpoint and
  continues; since every step is deterministic the final parameters are
  bit-identical to an uninterrupted run. A checkpoint being written when the
  process dies is left as an orbax tmp directory and ignored. The directory
  belongs to one training run: the pipeline gives each (config, data) its own.
* Metrics (loss, accuracy, tokens/s, lr) are appended to
  ``<out_dir>/metrics.jsonl``; on resume, lines past the restored step are dropped.
* Multi-host: the batch is the global batch (built identically on every
  process), sharded over a global 'data' axis; only process 0 writes metrics.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ttc_jax import accounting
from ttc_jax import parallel
from ttc_jax.models import checkpoints
from ttc_jax.host import hold as hold_point
from ttc_jax.models.checkpoints import CheckpointError
from ttc_jax.models.transformer import Transformer
from ttc_jax.parallel import DATA_AXIS
from ttc_jax.parallel import make_mesh
from ttc_jax.progress import fmt_duration
from ttc_jax.training.data import TokenDataset
from ttc_jax.training.data import batch_indices
from ttc_jax.training.data import bucketed_batch_indices
from ttc_jax.training.data import pack

Array = jax.Array
Batch = Mapping[str, Array]

# Train steps dispatched ahead of the host, at most. XLA:CPU admits at most 32 computations in
# flight per device; the 33rd launch waits for its device on a thread of the client's pool,
# which has max(cores, devices) threads, and a multi-device step needs one thread per device at
# once for its gradient all-reduce. Launches waiting there starve the running step's
# all-reduce, and XLA aborts the process after xla_cpu_collective_call_terminate_timeout_seconds
# (40 s): "Termination timeout for `all reduce ...` ... Expected 8 threads to join the
# rendezvous, but only 7 of them arrived on time." A few steps ahead keep the devices busy.
MAX_STEPS_IN_FLIGHT = 8


# ----------------------------------------------------------------------------
# Optimizer
# ----------------------------------------------------------------------------
def make_optimizer(cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                             optax.Schedule]:
  """AdamW with clipping, and its warmup/cosine learning-rate schedule, from a ``train``
  config section. The returned transformation is AdamW without its learning rate (optax's
  ``adamw`` chain, its last link a unit scale that keeps the step count): the train step
  scales the updates by ``-schedule(step)``, which it takes as an argument, so the compiled step
  does not hold the schedule and every run of one architecture, objective and batch shape
  shares its program, whatever its learning rate, warmup or length (the revision model's
  rounds, the verifiers trained on the policy's rows)."""
  check_config(cfg)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
      decay_steps=cfg.steps, end_value=cfg.learning_rate * cfg.final_lr_fraction)
  return _adamw_without_lr(float(cfg.grad_clip), float(cfg.b1), float(cfg.b2),
                           float(cfg.weight_decay)), schedule


@functools.lru_cache(maxsize=None)
def _adamw_without_lr(grad_clip: float, b1: float, b2: float, weight_decay: float
                      ) -> optax.GradientTransformation:
  """One object per setting: the train step's static argument, so equal settings hit the
  jit cache."""

  def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)

  # adamw's own chain, its learning rate a unit scale: the optimizer state keeps adamw's
  # layout (its last link's step count), so a run checkpointed by earlier code resumes.
  return optax.chain(
      optax.clip_by_global_norm(grad_clip),
      optax.chain(optax.scale_by_adam(b1=b1, b2=b2),
                  optax.add_decayed_weights(weight_decay, mask=decay_mask),
                  optax.scale_by_schedule(lambda count: 1.0)))


class TooFewRows(ValueError):
  """A training set smaller than one batch."""


def check_config(cfg: ml_collections.ConfigDict, prefix: str = "train") -> None:
  """Raises ValueError naming the key for a ``train`` section that cannot run."""
  for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
    if not isinstance(cfg[key], int) or cfg[key] <= 0:
      raise ValueError(f"{prefix}.{key}={cfg[key]!r} must be an integer > 0.")
  if not isinstance(cfg.warmup_steps, int) or not 0 <= cfg.warmup_steps < cfg.steps:
    raise ValueError(f"{prefix}.warmup_steps={cfg.warmup_steps!r} must be an integer in "
                     f"[0, {prefix}.steps={cfg.steps}): the cosine decay needs steps after "
                     "the warmup.")
  if not cfg.learning_rate > 0 or not 0 <= cfg.final_lr_fraction <= 1:
    raise ValueError(f"{prefix}.learning_rate={cfg.learning_rate!r} must be > 0 and "
                     f"{prefix}.final_lr_fraction={cfg.final_lr_fraction!r} in [0, 1].")
  pack_width = cfg.get("pack_width", 0)
  if not isinstance(pack_width, int) or isinstance(pack_width, bool) or pack_width < 0:
    raise ValueError(f"{prefix}.pack_width={pack_width!r} must be an integer >= 0 (0: one "
                     "sequence per row).")
  if not 0 <= cfg.get("label_smoothing", 0.0) < 1:
    raise ValueError(f"{prefix}.label_smoothing={cfg.label_smoothing!r} must be in [0, 1).")


# ----------------------------------------------------------------------------
# Objectives: (model, batch) -> (loss, metrics)
# ----------------------------------------------------------------------------
def _head(batch: Batch) -> Array | None:
  """The packed rows' segment ids of the positions that predict the next token."""
  return batch["segments"][:, :-1] if "segments" in batch else None


def _next_weights(batch: Batch) -> Array:
  """The weight of predicting the token at t + 1 from position t; in packed rows (data.pack)
  only within one sequence (a sequence's first token is never predicted, as in its own row)."""
  w = batch["weights"][:, 1:]
  if "segments" in batch:
    seg = batch["segments"]
    w = w * (seg[:, 1:] == seg[:, :-1])
  return w


def lm_loss(model: Transformer, batch: Batch, label_smoothing: float = 0.0
            ) -> tuple[Array, dict[str, Array]]:
  """Next-token cross-entropy where ``weights`` of the target token is set.

  With ``label_smoothing`` a > 0 the target is (1 - a) one-hot + a uniform
  (optax.smooth_labels); the reported loss is then the smoothed cross-entropy.
  """
  tokens, valid = batch["tokens"], batch["valid"]
  logits, _ = model(tokens[:, :-1], valid[:, :-1], segments=_head(batch))
  targets = tokens[:, 1:]
  w = _next_weights(batch)
  labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
  nll = optax.softmax_cross_entropy(logits, labels)
  denom = jnp.maximum(w.sum(), 1.0)
  loss = (nll * w).sum() / denom
  acc = ((jnp.argmax(logits, -1) == targets) * w).sum() / denom
  return loss, {"loss": loss, "accuracy": acc, "weight": w.sum()}


def value_loss(model: Transformer, batch: Batch, label_smoothing: float = 0.0
               ) -> tuple[Array, dict[str, Array]]:
  """Binary cross-entropy (soft labels) of the value head where ``weights`` is set."""
  del label_smoothing  # The targets are already soft.
  logits, _ = model(batch["tokens"], batch["valid"], segments=batch.get("segments"))
  w, y = batch["weights"], batch["targets"]
  bce = optax.sigmoid_binary_cross_entropy(logits, y)
  denom = jnp.maximum(w.sum(), 1.0)
  loss = (bce * w).sum() / denom
  acc = (((logits > 0) == (y > 0.5)) * w).sum() / denom
  return loss, {"loss": loss, "accuracy": acc, "weight": w.sum()}


def implicit_rewards(model: Transformer, batch: Batch, beta: float) -> Array:
  """(rows,) implicit reward of each row under an LM-head model: beta times the sum, over the
  row's weighted tokens, of log pi(token | prefix) - log pi_ref(token | prefix) (Rafailov
  et al. 2023; Yuan et al., arXiv 2412.01981, whose partial sums are the process rewards)."""
  tokens, valid = batch["tokens"], batch["valid"]
  logits, _ = model(tokens[:, :-1], valid[:, :-1], segments=_head(batch))
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1),
                           tokens[:, 1:, None], axis=-1)[..., 0]
  terms = (lp - batch["ref_logprobs"][:, 1:]) * _next_weights(batch)
  if "segments" not in batch:
    return beta * terms.sum(axis=1)
  # Packed rows: each token's term goes to its own row (segment id - 1; padding: dropped).
  rows = batch["labels"].shape[0]
  return beta * jax.ops.segment_sum(terms.reshape(-1), batch["segments"][:, 1:].reshape(-1) - 1,
                                    num_segments=rows)


def implicit_prm_loss(model: Transformer, batch: Batch, beta: float = 0.05
                      ) -> tuple[Array, dict[str, Array]]:
  """The implicit PRM (Yuan et al., arXiv 2412.01981): binary cross-entropy of
  sigmoid(implicit reward) against each row's outcome label."""
  r = implicit_rewards(model, batch, beta)
  y = batch["labels"]
  loss = optax.sigmoid_binary_cross_entropy(r, y).mean()
  acc = ((r > 0) == (y > 0.5)).mean()
  return loss, {"loss": loss, "accuracy": acc, "weight": batch["weights"].sum()}


def dpo_loss(model: Transformer, batch: Batch, beta: float = 0.1
             ) -> tuple[Array, dict[str, Array]]:
  """DPO (Rafailov et al. 2023) on pairs of consecutive rows, the preferred row first: the
  V-STaR verifier (Hosseini et al., arXiv 2402.06457) prefers a correct solution to an
  incorrect one of the same problem. ``accuracy``: the share of pairs ranked right."""
  r = implicit_rewards(model, batch, beta).reshape(-1, 2)
  margin = r[:, 0] - r[:, 1]
  loss = -jax.nn.log_sigmoid(margin).mean()
  return loss, {"loss": loss, "accuracy": (margin > 0).mean(), "weight": batch["weights"].sum()}


OBJECTIVES: dict[str, Callable[..., tuple[Array, dict[str, Array]]]] = {
    "lm": lm_loss, "value": value_loss, "implicit_prm": implicit_prm_loss, "dpo": dpo_loss}
# The keyword options each objective takes (train(options=...); the LM's label smoothing
# comes from its ``train`` section).
OBJECTIVE_OPTIONS = {"lm": ("label_smoothing",), "value": (), "implicit_prm": ("beta",),
                     "dpo": ("beta",)}
# The objectives whose loss is a weighted mean over positions (trainer.evaluate).
POSITION_WEIGHTED = ("lm", "value")
# Rows per example of each objective's dataset (TokenDataset.group).
OBJECTIVE_GROUP = {"dpo": 2}


# ----------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------
def _train_step(graphdef, params, opt_state, batch, lr, *, tx, objective, options):
  """One AdamW step at learning rate ``lr`` (a traced scalar: see make_optimizer)."""
  def loss_fn(p):
    model = nnx.merge(graphdef, p)
    return OBJECTIVES[objective](model, batch, **dict(options))

  grads, metrics = jax.grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  # optax's scale_by_learning_rate, the last link of its adamw chain.
  updates = jax.tree.map(lambda u: jnp.asarray(-lr, u.dtype) * u, updates)
  params = optax.apply_updates(params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return params, opt_state, metrics


# Module-level, so runs in one process share the compiled steps (jit's cache is per function
# object: the static arguments, graphdef, tx, objective and options, and the shapes key it).
_TRAIN_STEP = jax.jit(_train_step, static_argnums=(0,),
                      static_argnames=("tx", "objective", "options"), donate_argnums=(1, 2))


def _read_metrics(path: str, upto_step: int) -> list[str]:
  if not os.path.exists(path):
    return []
  keep = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= upto_step:
          keep.append(line)
      except (ValueError, KeyError):
        break  # a torn last line from a killed run
  return keep


def _truncate_metrics(path: str, upto_step: int) -> None:
  """Rewrites the metrics file with its lines up to ``upto_step`` only (a resumed run's)."""
  kept = _read_metrics(path, upto_step)
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def _check_batch_size(dataset: TokenDataset, cfg: ml_collections.ConfigDict, data_size: int,
                      name: str) -> None:
  """Raises for a batch that does not split over the mesh or a bucketed dataset too small."""
  if cfg.batch_size * dataset.group % data_size:
    rows = f" ({cfg.batch_size * dataset.group} rows)" if dataset.group > 1 else ""
    raise ValueError(f"train.batch_size={cfg.batch_size}{rows} must be a multiple of the mesh "
                     f"'data' axis ({data_size}).")
  if cfg.get("bucket_pool_batches", 0) and len(dataset) < cfg.batch_size:
    raise TooFewRows(
        f"{name}: {len(dataset)} training rows, fewer than {name}.train.batch_size="
        f"{cfg.batch_size} (a bucketed batch holds distinct rows): lower the batch size, "
        "give it more data (for the revision model: more revision_data problems or samples, or a "
        "stronger policy, which yields more trajectories), or set "
        f"{name}.train.bucket_pool_batches=0.")


def _restore_latest(manager, model_config, cfg: ml_collections.ConfigDict, params, opt_state,
                    sharding: NamedSharding, log_fn: Callable[[str], None]):
  """(step, params, opt_state) of the latest checkpoint in ``manager``; (0, params,
  opt_state) as given when there is none. Raises CheckpointError for a checkpoint that
  cannot be read or that another config wrote."""
  latest = manager.latest_step()
  if latest is None:
    return 0, params, opt_state
  try:
    tree = checkpoints.restore(
        manager, latest, model_config,
        params=ocp.args.StandardRestore(checkpoints.abstract(params, sharding)),
        opt_state=ocp.args.StandardRestore(checkpoints.abstract(opt_state, sharding)),
        meta=ocp.args.JsonRestore())
  except CheckpointError as e:
    raise CheckpointError(
        f"{e} To resume from the checkpoint before it, delete "
        f"{os.path.join(manager.directory, str(latest))} and rerun (or delete "
        f"{manager.directory} to train from scratch).") from None
  start = int(tree["meta"]["step"])
  if start != latest or tree["meta"]["data_position"] != start * cfg.batch_size:
    raise CheckpointError(
        f"checkpoint {latest} in {manager.directory} records {tree['meta']}; inconsistent "
        f"with train.batch_size={cfg.batch_size}. Was it written by a different config?")
  if start > cfg.steps:
    raise CheckpointError(
        f"{manager.directory} holds step {start} > train.steps={cfg.steps}; use a fresh "
        "workdir to train for fewer steps.")
  params, opt_state = tree["params"], tree["opt_state"]
  log_fn(f"resumed from step {start} ({manager.directory})")
  return start, params, opt_state


def _save(manager, step: int, params, opt_state, cfg: ml_collections.ConfigDict) -> None:
  """Checkpoints params, optimizer state and the data position after ``step`` steps."""
  checkpoints.save(
      manager, step, params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave({"step": step, "data_position": step * cfg.batch_size,
                              "seed": cfg.seed}))


def _host_batch(dataset: TokenDataset, cfg: ml_collections.ConfigDict, step: int,
                data_size: int = 1) -> dict[str, np.ndarray]:
  """The host arrays of ``step``'s batch: its rows are a pure function of (seed, step);
  with ``pack_width``, packed into rows of that many tokens (or of the longest row, rounded
  up to ``pad_multiple``; ``data.pack``), as many as a multiple of 4 and of the data devices."""
  if cfg.get("bucket_pool_batches", 0):
    idx = bucketed_batch_indices(dataset.lengths, cfg.batch_size, cfg.seed, step,
                                 cfg.bucket_pool_batches)
  else:
    idx = batch_indices(len(dataset), cfg.batch_size, cfg.seed, step)
  batch = dataset.batch(idx, cfg.get("pad_multiple", None))
  if cfg.get("pack_width", 0):
    width = max(cfg.pack_width, batch["tokens"].shape[1])
    batch = pack(batch, width, rows_multiple=math.lcm(4, data_size))
  return batch


def _dispatch_step(step_fn, graphdef, params, opt_state, batch, lr, in_flight: collections.deque,
                   *, tx, objective: str):
  """Launches one train step; once more than MAX_STEPS_IN_FLIGHT steps are pending, waits
  for the oldest. Returns the step's (params, opt_state, metrics), not waited for."""
  params, opt_state, metrics = step_fn(graphdef, params, opt_state, batch, lr, tx=tx,
                                       objective=objective)
  in_flight.append(metrics["loss"])
  if len(in_flight) > MAX_STEPS_IN_FLIGHT:
    in_flight.popleft().block_until_ready()
  return params, opt_state, metrics


@dataclasses.dataclass
class _Since:
  """Where the last metrics line was written (the time, the step) and the tokens trained on
  since: the rates of the next line."""
  time: float
  step: int
  tokens: int = 0


def _log_metrics(metrics_file, metrics: dict[str, Array], step: int, since: _Since, *,
                 cfg: ml_collections.ConfigDict, schedule: optax.Schedule, name: str,
                 log_fn: Callable[[str], None]) -> None:
  """Writes the metrics line after ``step`` (0-based) to ``metrics_file`` and logs
  progress; raises FloatingPointError for non-finite metrics. Resets ``since`` to now."""
  done = step + 1
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not all(np.isfinite(v) for v in m.values()):
    raise FloatingPointError(f"non-finite metrics at step {done}: {m}")
  now = time.time()
  rate = (done - since.step) / max(now - since.time, 1e-9)
  tok_rate = since.tokens / max(now - since.time, 1e-9)
  record = {"step": done, "loss": m["loss"], "accuracy": m["accuracy"],
            "grad_norm": m["grad_norm"], "lr": float(schedule(step)),
            "tokens_per_s": tok_rate}
  metrics_file.write(json.dumps(record) + "\n")
  metrics_file.flush()
  log_fn(f"[{name}] step {done}/{cfg.steps} loss {m['loss']:.4f} "
         f"acc {m['accuracy']:.3f} | {rate:.2f} steps/s {tok_rate:,.0f} tok/s | "
         f"ETA {fmt_duration((cfg.steps - done) / max(rate, 1e-9))}")
  since.time, since.step, since.tokens = now, done, 0


@functools.lru_cache(maxsize=16)
def _metrics_fn(graphdef, objective: str, options: tuple):
  """The jitted metrics of ``objective`` for models of ``graphdef`` (one per architecture:
  evaluating every checkpoint of a run compiles once per batch shape)."""
  return jax.jit(lambda p, b: OBJECTIVES[objective](nnx.merge(graphdef, p), b,
                                                    **dict(options))[1])


def evaluate(model: Transformer, dataset: TokenDataset, *, objective: str, batch_size: int,
             options: Mapping[str, float] | None = None) -> dict[str, float]:
  """The objective's loss and accuracy over every example of ``dataset`` once: the mean over
  the dataset's weighted positions, whatever the batch size (the last batch is padded at
  weight 0): a held-out set's numbers. For the objectives weighted by position ('lm',
  'value'; the implicit-reward objectives average over rows)."""
  if objective not in POSITION_WEIGHTED:
    raise ValueError(f"objective={objective!r}: expected one of {POSITION_WEIGHTED} (weighted "
                     "by position).")
  if len(dataset) == 0:
    raise ValueError("evaluate: the dataset has no example.")
  graphdef, params = nnx.split(model)
  fn = _metrics_fn(graphdef, objective, tuple(sorted((options or {}).items())))
  total, weight = {"loss": 0.0, "accuracy": 0.0}, 0.0
  for start in range(0, len(dataset), batch_size):
    idx = np.arange(start, start + batch_size)
    real = idx < len(dataset)
    batch = dataset.batch(np.where(real, idx, 0))  # one shape: the last batch padded ...
    batch["weights"] = batch["weights"] * np.repeat(real, dataset.group)[:, None]  # ... at 0
    m = jax.device_get(fn(params, batch))
    w = float(m["weight"])
    for k in total:  # each a sum over the batch / max(its weight, 1)
      total[k] += float(m[k]) * max(w, 1.0)
    weight += w
  return {k: v / max(weight, 1e-12) for k, v in total.items()} | {"weight": weight}


def train(model: Transformer, dataset: TokenDataset, cfg: ml_collections.ConfigDict,
          out_dir: str, *, objective: str, mesh=None, log_fn=logging.info,
          name: str = "train", options: Mapping[str, float] | None = None,
          keep_checkpoints: int | None = 2) -> Transformer:
  """Trains ``model`` in place on ``dataset``; resumes from ``out_dir/checkpoints``.

  Args:
    model: initial model (its params are replaced by a checkpoint's if one exists).
    dataset: training data.
    cfg: ``train`` section: steps, batch_size, learning_rate, warmup_steps,
      final_lr_fraction, weight_decay, b1, b2, grad_clip, checkpoint_every,
      log_every, seed; optional bucket_pool_batches (> 0: batches of similar
      lengths, see ``data.bucketed_batch_indices``), label_smoothing (LM
      objective), pad_multiple (cut each batch to its longest row rounded up to this;
      one compile per width) and pack_width (> 0: the step's sequences packed into rows
      of at least this many tokens, ``data.pack``; the same loss per token).
    out_dir: output directory of this training run (checkpoints/, metrics.jsonl).
    objective: 'lm', 'value', 'implicit_prm' or 'dpo' (:data:`OBJECTIVES`).
    options: the objective's keyword options (:data:`OBJECTIVE_OPTIONS`: the implicit-reward
      objectives' ``beta``).
    mesh: a ('data', 'model') mesh; default: all devices (of all processes) on 'data'.
    name: shown in the progress lines.
    keep_checkpoints: how many of the latest checkpoints to keep (None: every one, for a
      choice among them after training).

  Returns:
    The trained model (the same object).
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective={objective!r}: expected one of {sorted(OBJECTIVES)}.")
  if dataset.group != OBJECTIVE_GROUP.get(objective, 1):
    raise ValueError(f"objective={objective!r} takes examples of "
                     f"{OBJECTIVE_GROUP.get(objective, 1)} rows; the dataset's have "
                     f"{dataset.group}.")
  check_config(cfg)
  mesh = make_mesh() if mesh is None else mesh
  _check_batch_size(dataset, cfg, mesh.shape[DATA_AXIS], name)
  os.makedirs(out_dir, exist_ok=True)
  tx, schedule = make_optimizer(cfg)
  graphdef, params = nnx.split(model)
  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P(DATA_AXIS))
  # Copy first: the train step donates its inputs, and the caller's model (or
  # another model sharing arrays with it) must not lose its buffers.
  params = jax.device_put(jax.tree.map(jnp.copy, params), replicated)
  opt_state = jax.device_put(tx.init(params), replicated)

  manager = checkpoints.manager(os.path.join(out_dir, "checkpoints"), keep_checkpoints)
  start, params, opt_state = _restore_latest(manager, model.config, cfg, params, opt_state,
                                             replicated, log_fn)

  metrics_path = os.path.join(out_dir, "metrics.jsonl")
  primary = parallel.is_primary()
  if primary:
    _truncate_metrics(metrics_path, start)

  opts = dict(options or {})
  if objective == "lm":
    opts.setdefault("label_smoothing", float(cfg.get("label_smoothing", 0.0)))
  unknown = sorted(set(opts) - set(OBJECTIVE_OPTIONS[objective]))
  if unknown:
    raise ValueError(f"objective={objective!r} takes the options "
                     f"{list(OBJECTIVE_OPTIONS[objective])}; got {unknown}.")
  options = tuple(sorted((k, float(v)) for k, v in opts.items()))
  step_fn = functools.partial(_TRAIN_STEP, options=options)
  lr_at = jax.jit(schedule)  # the learning rate of a step, as the optax chain computes it

  in_flight = collections.deque()  # the loss of each step not waited for yet
  since = _Since(time=time.time(), step=start)
  t_start, valid_tokens, computed_tokens = time.time(), 0, 0
  with open(metrics_path if primary else os.devnull, "a") as mf:
    for step in range(start, cfg.steps):
      host = _host_batch(dataset, cfg, step, mesh.shape[DATA_AXIS])
      since.tokens += int(host["valid"].sum())
      valid_tokens += int(host["valid"].sum())
      computed_tokens += int(host["valid"].size)
      batch = jax.device_put(host, rows)
      params, opt_state, metrics = _dispatch_step(step_fn, graphdef, params, opt_state, batch,
                                                  lr_at(step), in_flight, tx=tx,
                                                  objective=objective)
      done = step + 1
      if done % cfg.log_every == 0 or done == cfg.steps:
        _log_metrics(mf, metrics, step, since, cfg=cfg, schedule=schedule, name=name,
                     log_fn=log_fn)
      if done % cfg.checkpoint_every == 0 or done == cfg.steps:
        _save(manager, done, params, opt_state, cfg)
        hold_point(f"checkpoint:{name}:{done}")
  if start == cfg.steps and manager.latest_step() != cfg.steps:
    _save(manager, cfg.steps, params, opt_state, cfg)
  manager.wait_until_finished()
  manager.close()
  nnx.update(model, params)
  if cfg.steps > start:
    seconds = time.time() - t_start
    n = accounting.ModelCost.from_config(model.config).params
    THROUGHPUT.append({
        "name": name, "steps": cfg.steps - start, "seconds": seconds,
        "tokens": valid_tokens, "tokens_per_s": valid_tokens / seconds,
        "padding_share": 1 - valid_tokens / max(computed_tokens, 1),
        # 6 N D (forward and backward matmuls of the real tokens; attention left out)
        "gflops_per_s": 6 * n * valid_tokens / seconds / 1e9})
  return model


# What each training run of this process did (its steps run here: a resumed run, the rest):
# steps, seconds, real tokens and tokens/s, the padded share of the tokens computed, and the
# 6 N D matmul GFLOP/s. The pipeline writes a stage's runs to its stage.json.
THROUGHPUT: list[dict] = []
