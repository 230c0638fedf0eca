"""The training loop shared by the policy (LM objective) and the verifiers (value objective).

* optax: AdamW with linear warmup + cosine decay and global-norm clipping; weight
  decay on matrices only.
* One jitted, donated train step over pure pytrees (``nnx.split`` outside,
  ``nnx.merge`` inside); the batch is sharded over the mesh ``'data'`` axis,
  parameters and optimizer state are replicated.
* Data order is a pure function of (seed, step) (see ``training.data``).
* orbax ``CheckpointManager`` under ``<part_dir>/checkpoints`` holds params,
  optimizer state, step and data position, saved every ``checkpoint_every``
  steps and at the end. A rerun restores the latest complete checkpoint and
  continues; since every step is deterministic the final parameters are
  bit-identical to an uninterrupted run. A checkpoint being written when the
  process dies is left as an orbax tmp directory and ignored.
* Metrics (loss, accuracy, tokens/s, lr) are appended to
  ``<part_dir>/metrics.jsonl``; on resume, lines past the restored step are dropped.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Mapping

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

from ttc_jax.models.transformer import Transformer
from ttc_jax.progress import fmt_duration
from ttc_jax.sampling.core import DATA_AXIS
from ttc_jax.sampling.core import make_mesh
from ttc_jax.training.data import TokenDataset
from ttc_jax.training.data import batch_indices
from ttc_jax.training.data import bucketed_batch_indices

Array = jax.Array
Batch = Mapping[str, Array]


class CheckpointError(RuntimeError):
  """A checkpoint directory exists but cannot be restored."""


# ----------------------------------------------------------------------------
# Optimizer
# ----------------------------------------------------------------------------
def make_optimizer(cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                             optax.Schedule]:
  """AdamW + warmup/cosine schedule + clipping from a ``train`` config section."""
  if cfg.steps <= 0:
    raise ValueError(f"train.steps={cfg.steps} must be > 0.")
  warmup = min(cfg.warmup_steps, cfg.steps)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=cfg.steps, end_value=cfg.learning_rate * cfg.final_lr_fraction)

  def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)

  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                  mask=decay_mask))
  return tx, schedule


# ----------------------------------------------------------------------------
# Objectives: (model, batch) -> (loss, metrics)
# ----------------------------------------------------------------------------
def lm_loss(model: Transformer, batch: Batch, label_smoothing: float = 0.0
            ) -> tuple[Array, dict[str, Array]]:
  """Next-token cross-entropy where ``weights`` of the target token is set.

  With ``label_smoothing`` a > 0 the target is (1 - a) one-hot + a uniform
  (optax.smooth_labels); the reported loss is then the smoothed cross-entropy.
  """
  tokens, valid = batch["tokens"], batch["valid"]
  logits, _ = model(tokens[:, :-1], valid[:, :-1])
  targets = tokens[:, 1:]
  w = batch["weights"][:, 1:]
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
  logits, _ = model(batch["tokens"], batch["valid"])
  w, y = batch["weights"], batch["targets"]
  bce = optax.sigmoid_binary_cross_entropy(logits, y)
  denom = jnp.maximum(w.sum(), 1.0)
  loss = (bce * w).sum() / denom
  acc = (((logits > 0) == (y > 0.5)) * w).sum() / denom
  return loss, {"loss": loss, "accuracy": acc, "weight": w.sum()}


OBJECTIVES: dict[str, Callable[[Transformer, Batch], tuple[Array, dict[str, Array]]]] = {
    "lm": lm_loss, "value": value_loss}


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------
def checkpoint_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def _restore(manager: ocp.CheckpointManager, step: int, **items) -> Any:
  """Restores the named items of ``step``; a clear error if the checkpoint is damaged."""
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"checkpoint step {step} in {manager.directory} cannot be restored "
        f"({type(e).__name__}: {str(e)[:300]}). Delete that step directory (or the whole "
        f"checkpoints directory to retrain from scratch) and rerun.") from e


def _abstract(tree, sharding=None):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def load_params(directory: str, model: Transformer, *, expect_step: int | None = None
                ) -> Transformer:
  """Loads the params of the latest checkpoint written by :func:`train` into ``model``.

  Args:
    directory: a ``checkpoints`` directory.
    model: a model of the same architecture; updated in place and returned.
    expect_step: if given, the checkpoint must be the final one of a run of
      this many steps.

  Raises:
    FileNotFoundError: no complete checkpoint in ``directory``.
    CheckpointError: damaged checkpoint, or training has not reached ``expect_step``.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}.")
  manager = checkpoint_manager(directory)
  try:
    latest = manager.latest_step()
    if latest is None:
      raise FileNotFoundError(f"no complete checkpoint in {directory}.")
    if expect_step is not None and latest != expect_step:
      raise CheckpointError(
          f"{directory} holds step {latest}, but that part trains for {expect_step} steps: "
          "it has not finished; rerun it to resume.")
    params = nnx.state(model, nnx.Param)
    tree = _restore(manager, latest, params=ocp.args.StandardRestore(_abstract(params)))
  finally:
    manager.close()
  nnx.update(model, tree["params"])
  return model


# ----------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------
def _train_step(graphdef, params, opt_state, batch, *, tx, objective, label_smoothing):
  def loss_fn(p):
    model = nnx.merge(graphdef, p)
    return OBJECTIVES[objective](model, batch, label_smoothing)

  grads, metrics = jax.grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return params, opt_state, metrics


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


def train(model: Transformer, dataset: TokenDataset, cfg: ml_collections.ConfigDict,
          part_dir: str, *, objective: str, mesh=None, log_fn=logging.info) -> Transformer:
  """Trains ``model`` in place on ``dataset``; resumes from ``part_dir/checkpoints``.

  Args:
    model: initial model (its params are replaced by a checkpoint's if one exists).
    dataset: training data.
    cfg: ``train`` section: steps, batch_size, learning_rate, warmup_steps,
      final_lr_fraction, weight_decay, b1, b2, grad_clip, checkpoint_every,
      log_every, seed; optional bucket_pool_batches (> 0: batches of similar
      lengths, see ``data.bucketed_batch_indices``), label_smoothing (LM
      objective) and pad_multiple (cut each
      batch to its longest row rounded up to this; one compile per width).
    part_dir: output directory of this part (checkpoints/, metrics.jsonl).
    objective: 'lm' or 'value'.
    mesh: a ('data', 'model') mesh; default: all devices on 'data'.

  Returns:
    The trained model (the same object).
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective={objective!r}: expected one of {sorted(OBJECTIVES)}.")
  for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
    if int(cfg[key]) <= 0:
      raise ValueError(f"train.{key}={cfg[key]} must be > 0.")
  mesh = make_mesh() if mesh is None else mesh
  data_size = mesh.shape[DATA_AXIS]
  if cfg.batch_size % data_size:
    raise ValueError(f"train.batch_size={cfg.batch_size} must be a multiple of the mesh "
                     f"'data' axis ({data_size}).")
  os.makedirs(part_dir, exist_ok=True)
  tx, schedule = make_optimizer(cfg)
  graphdef, params = nnx.split(model)
  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P(DATA_AXIS))
  # Copy first: the train step donates its inputs, and the caller's model (or
  # another model sharing arrays with it) must not lose its buffers.
  params = jax.device_put(jax.tree.map(jnp.copy, params), replicated)
  opt_state = jax.device_put(tx.init(params), replicated)

  manager = checkpoint_manager(os.path.join(part_dir, "checkpoints"))
  start = 0
  latest = manager.latest_step()
  if latest is not None:
    tree = _restore(manager, latest,
                    params=ocp.args.StandardRestore(_abstract(params, replicated)),
                    opt_state=ocp.args.StandardRestore(_abstract(opt_state, replicated)),
                    meta=ocp.args.JsonRestore())
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

  metrics_path = os.path.join(part_dir, "metrics.jsonl")
  kept = _read_metrics(metrics_path, start)
  with open(metrics_path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(metrics_path + ".tmp", metrics_path)

  step_fn = functools.partial(
      jax.jit(_train_step, static_argnums=(0,),
              static_argnames=("tx", "objective", "label_smoothing"), donate_argnums=(1, 2)),
      label_smoothing=float(cfg.get("label_smoothing", 0.0)))

  def save(step):
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave({"step": step, "data_position": step * cfg.batch_size,
                                "seed": cfg.seed})))

  n = len(dataset)
  t0 = time.time()
  last_t, last_step, tokens_since = t0, start, 0
  with open(metrics_path, "a") as mf:
    for step in range(start, cfg.steps):
      if cfg.get("bucket_pool_batches", 0):
        idx = bucketed_batch_indices(dataset.lengths, cfg.batch_size, cfg.seed, step,
                                     cfg.bucket_pool_batches)
      else:
        idx = batch_indices(n, cfg.batch_size, cfg.seed, step)
      host = dataset.batch(idx, cfg.get("pad_multiple", None))
      tokens_since += int(host["valid"].sum())
      batch = jax.device_put(host, rows)
      params, opt_state, metrics = step_fn(graphdef, params, opt_state, batch, tx=tx,
                                           objective=objective)
      done = step + 1
      if done % cfg.log_every == 0 or done == cfg.steps:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(np.isfinite(v) for v in m.values()):
          raise FloatingPointError(f"non-finite metrics at step {done}: {m}")
        now = time.time()
        rate = (done - last_step) / max(now - last_t, 1e-9)
        tok_rate = tokens_since / max(now - last_t, 1e-9)
        record = {"step": done, "loss": m["loss"], "accuracy": m["accuracy"],
                  "grad_norm": m["grad_norm"], "lr": float(schedule(step)),
                  "tokens_per_s": tok_rate}
        mf.write(json.dumps(record) + "\n")
        mf.flush()
        log_fn(f"[{os.path.basename(part_dir)}] step {done}/{cfg.steps} loss {m['loss']:.4f} "
               f"acc {m['accuracy']:.3f} | {rate:.2f} steps/s {tok_rate:,.0f} tok/s | "
               f"ETA {fmt_duration((cfg.steps - done) / max(rate, 1e-9))}")
        last_t, last_step, tokens_since = now, done, 0
      if done % cfg.checkpoint_every == 0 or done == cfg.steps:
        save(done)
  if start == cfg.steps and manager.latest_step() != cfg.steps:
    save(cfg.steps)
  manager.wait_until_finished()
  manager.close()
  nnx.update(model, params)
  return model
