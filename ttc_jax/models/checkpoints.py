"""Model parameters on disk (orbax), and a model's description as plain JSON.

A checkpoint directory is an orbax ``CheckpointManager`` directory whose steps
hold (at least) a ``params`` item: the training loop writes them
(``ttc_jax.training.trainer``) with the optimizer state beside; loading a model
only reads ``params``. A model's architecture travels with it as
``TransformerConfig`` fields (:func:`config_to_dict` / :func:`config_from_dict`),
so nothing needs the experiment config to rebuild a trained model.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig


class CheckpointError(RuntimeError):
  """A checkpoint directory exists but cannot be restored or written."""


def config_to_dict(config: TransformerConfig) -> dict[str, Any]:
  return dataclasses.asdict(config)


def config_from_dict(d: dict[str, Any]) -> TransformerConfig:
  known = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f"model description has unknown fields {unknown}; known: {sorted(known)}.")
  return TransformerConfig(**d)


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager: a failed write (e.g. a full disk) raises in the
  caller's thread, where it can be reported in one line."""
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False))


def restore(mgr: ocp.CheckpointManager, step: int, **items) -> Any:
  """Restores the named items of ``step``; a clear error if the checkpoint is damaged."""
  try:
    return mgr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"checkpoint step {step} in {mgr.directory} cannot be restored "
        f"({type(e).__name__}: {str(e)[:300]}). Delete that step directory (or the whole "
        f"checkpoints directory to retrain from scratch) and rerun.") from e


def save(mgr: ocp.CheckpointManager, step: int, **items) -> None:
  """Saves ``items`` as ``step``; an OSError (full disk, permissions) becomes one line."""
  try:
    mgr.save(step, args=ocp.args.Composite(**items))
    mgr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    cause = os_error(e)
    if cause is None:
      raise
    raise CheckpointError(
        f"could not write checkpoint step {step} to {mgr.directory}: [Errno {cause.errno}] "
        f"{os.strerror(cause.errno)}" + (" (free some disk space and rerun: training resumes "
                                         "from the last complete checkpoint)"
                                         if cause.errno == errno.ENOSPC else "")) from None


def os_error(e: BaseException) -> OSError | None:
  """The first OSError with an errno in ``e``'s chain of causes (orbax wraps them)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return e
    if "No space left on device" in str(e):
      return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    e = e.__cause__ or e.__context__
  return None


def abstract(tree, sharding=None):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def abstract_model(config: TransformerConfig) -> Transformer:
  """A zero-filled model of ``config`` (cheap: no random init), to restore into."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
  state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state)
  return nnx.merge(graphdef, state)


def restore_params(directory: str, model: Transformer, *, step: int | None = None
                   ) -> Transformer:
  """Loads ``params`` of checkpoint ``step`` (default: the latest) into ``model``.

  Raises:
    FileNotFoundError: no complete checkpoint in ``directory``.
    CheckpointError: damaged checkpoint, or ``step`` is not the latest one.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}.")
  mgr = manager(directory)
  try:
    latest = mgr.latest_step()
    if latest is None:
      raise FileNotFoundError(f"no complete checkpoint in {directory}.")
    if step is not None and latest != step:
      raise CheckpointError(
          f"{directory} holds step {latest}, not the final step {step}: that training run "
          "has not finished; rerun it to resume.")
    params = nnx.state(model, nnx.Param)
    # Onto this process's first device: each process of a multi-host run holds the
    # whole model (its users shard rows, not parameters).
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    tree = restore(mgr, latest, params=ocp.args.StandardRestore(abstract(params, local)))
  finally:
    mgr.close()
  nnx.update(model, tree["params"])
  return model


def copy_backbone(source: Transformer, target: Transformer) -> Transformer:
  """Copies the embeddings, blocks and final norm of ``source`` into ``target`` (any
  heads): e.g. a value-head PRM initialised from its policy.

  ``target`` may have a longer context (``max_seq_len``: RoPE has no parameters; e.g.
  the revision model, which reads earlier attempts) and may be deeper than ``source``
  (otherwise the same backbone shape): its
  first blocks are the source's, and each extra block starts as the identity (its
  attention output and MLP down projections are zero, so it adds nothing to the
  residual stream), so the deeper model computes the source's function at
  initialisation and training grows checks on top of it.
  """
  src_cfg = dataclasses.replace(source.config, head="lm", tie_embeddings=False)
  tgt_cfg = dataclasses.replace(target.config, head="lm", tie_embeddings=False)
  extra = tgt_cfg.num_layers - src_cfg.num_layers
  same = dataclasses.replace(tgt_cfg, num_layers=src_cfg.num_layers,
                             max_seq_len=src_cfg.max_seq_len)
  if extra < 0 or tgt_cfg.max_seq_len < src_cfg.max_seq_len or same != src_cfg:
    raise ValueError(f"backbones differ (the target may only be deeper or have a longer "
                     f"context): {source.config} vs {target.config}.")
  state = nnx.state(target)
  pure = nnx.to_pure_dict(state)
  src = nnx.to_pure_dict(nnx.state(source))
  pure["embed"], pure["final_norm"] = src["embed"], src["final_norm"]
  for i in range(tgt_cfg.num_layers):
    if i < src_cfg.num_layers:
      pure["layers"][i] = src["layers"][i]
    else:
      block = pure["layers"][i]
      block["attn"]["out"] = jnp.zeros_like(block["attn"]["out"])
      block["mlp"]["down"] = jnp.zeros_like(block["mlp"]["down"])
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(target, state)
  return target
