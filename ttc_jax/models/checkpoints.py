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
import hashlib
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


def manager(directory: str, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager: a failed write (e.g. a full disk) raises in the
  caller's thread, where it can be reported in one line."""
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False))


# Checkpoints written before the attention and MLP projections were separate parameters
# (ttc_jax up to commit 740255b) hold fused 'qkv' (and 'qkv_bias') and 'gate_up' matrices:
# their columns are [q | k | v] and [gate | up]. :func:`restore` splits them.
_FUSED = {"qkv": ("q", "k", "v"), "qkv_bias": ("q_bias", "k_bias", "v_bias"),
          "gate_up": ("gate", "up")}


def _has_fused(tree) -> bool:
  if isinstance(tree, dict):
    return any(k in _FUSED or _has_fused(v) for k, v in tree.items())
  if isinstance(tree, (list, tuple)):
    return any(_has_fused(v) for v in tree)
  return False


def _split_fused(tree, config: TransformerConfig):
  """``tree`` (a raw restored params or optimizer state) with fused matrices split."""
  if isinstance(tree, (list, tuple)):
    return type(tree)(_split_fused(v, config) for v in tree)
  if not isinstance(tree, dict):
    return tree
  h, kv, hd = config.num_heads, config.kv_heads, config.dim_per_head
  out = {}
  for key, value in tree.items():
    if key not in _FUSED:
      out[key] = _split_fused(value, config)
      continue
    wrapped = isinstance(value, dict)  # {'value': array} of an nnx.Variable
    x = np.asarray(value["value"] if wrapped else value)
    cuts = [h * hd, (h + kv) * hd] if key.startswith("qkv") else [x.shape[-1] // 2]
    for name, part in zip(_FUSED[key], np.split(x, cuts, axis=-1)):
      out[name] = {"value": part} if wrapped else part
  return out


def _norm_path(keypath) -> tuple[str, ...]:
  names = []
  for k in keypath:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
  return tuple(names)


def _restore_fused(mgr, step, config, items):
  """Restores a checkpoint of the fused layout into the targets of ``items``."""
  # The stored trees as they are (fused), onto this process's first device: a checkpoint
  # written on another mesh (e.g. a 2-device 'data' axis) restores only with a target.
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  raw_args = {}
  for name, arg in items.items():
    if isinstance(arg, ocp.args.StandardRestore):
      meta = ocp.StandardCheckpointHandler().metadata(mgr.directory / str(step) / name)
      raw_args[name] = ocp.args.StandardRestore(jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local)
          if hasattr(m, "shape") else m, getattr(meta, "tree", meta),
          is_leaf=lambda m: hasattr(m, "shape")))
    else:
      raw_args[name] = arg
  raw = mgr.restore(step, args=ocp.args.Composite(**raw_args))
  out = {}
  for name, arg in items.items():
    if not isinstance(arg, ocp.args.StandardRestore):
      out[name] = raw[name]
      continue
    tree = _split_fused(raw[name], config)
    flat = {_norm_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    def place(path, target):
      key = _norm_path(path)
      if key not in flat:
        raise KeyError(f"{'.'.join(key)} is not in the checkpoint")
      x = np.asarray(flat[key])
      if x.shape != tuple(target.shape):
        raise ValueError(f"{'.'.join(key)}: shape {x.shape} in the checkpoint, "
                         f"{tuple(target.shape)} expected")
      return jax.device_put(x.astype(target.dtype), target.sharding)

    out[name] = jax.tree_util.tree_map_with_path(place, arg.item)
  return out


def restore(mgr: ocp.CheckpointManager, step: int, config: TransformerConfig | None = None,
            **items) -> Any:
  """Restores the named items of ``step``; a clear error if the checkpoint is damaged.

  config: the model's config, to read a checkpoint of the fused layout (see _FUSED) into
    a model's params and their optimizer state.
  """
  try:
    if config is not None and "params" in items:
      meta = ocp.StandardCheckpointHandler().metadata(
          mgr.directory / str(step) / "params")
      if _has_fused(getattr(meta, "tree", meta)):
        return _restore_fused(mgr, step, config, items)
    return mgr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"checkpoint step {step} in {mgr.directory} cannot be restored "
        f"({type(e).__name__}: {str(e)[:300]}).") from e


def save_params(directory: str, step: int, model: Transformer) -> None:
  """Writes ``model``'s params alone as checkpoint ``step`` of ``directory`` (e.g. the
  checkpoint chosen among a training run's: what :func:`restore_params` reads)."""
  mgr = manager(directory)
  try:
    save(mgr, step, params=ocp.args.StandardSave(nnx.state(model, nnx.Param)))
  finally:
    mgr.close()


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


def restore_params(directory: str, model: Transformer, *, step: int | None = None,
                   any_step: bool = False) -> Transformer:
  """Loads ``params`` of checkpoint ``step`` (default: the latest) into ``model``.

  ``any_step``: ``step`` may be an earlier checkpoint than the latest (a trainer that kept
  them all); otherwise it must be the latest (a model's final step: an earlier latest is an
  unfinished run).

  Raises:
    FileNotFoundError: no complete checkpoint in ``directory``.
    CheckpointError: damaged checkpoint, or ``step`` is not the latest one (nor kept).
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}.")
  mgr = manager(directory, max_to_keep=None)
  try:
    latest = mgr.latest_step()
    if latest is None:
      raise FileNotFoundError(f"no complete checkpoint in {directory}.")
    if any_step and step is not None:
      if step not in mgr.all_steps():
        raise CheckpointError(f"{directory} holds steps {sorted(mgr.all_steps())}, not {step}.")
      latest = step
    if step is not None and latest != step:
      raise CheckpointError(
          f"{directory} holds step {latest}, not the final step {step}: that training run "
          "has not finished; rerun it to resume.")
    params = nnx.state(model, nnx.Param)
    # Onto this process's first device: each process of a multi-host run holds the
    # whole model (its users shard rows, not parameters).
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    tree = restore(mgr, latest, model.config,
                   params=ocp.args.StandardRestore(abstract(params, local)))
  finally:
    mgr.close()
  nnx.update(model, tree["params"])
  return model


def params_digest(model: Transformer) -> str:
  """The sha256 of ``model``'s parameters (every leaf's path, dtype, shape and bytes, in
  path order): what a model's outputs record of the model that made them, whatever
  directory or checkpoint step it was read from."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    x = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}|".encode())
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


def copy_backbone(source: Transformer, target: Transformer, *, lm_head: bool = False
                  ) -> Transformer:
  """Copies the embeddings, blocks and final norm of ``source`` into ``target`` (any
  heads): e.g. a value-head PRM initialised from its policy.

  ``target`` may have a longer context (``max_seq_len``: RoPE has no parameters; e.g.
  the revision model, which reads earlier attempts) and may be deeper than ``source``
  (otherwise the same backbone shape): its
  first blocks are the source's, and each extra block starts as the identity (its
  attention output and MLP down projections are zero, so it adds nothing to the
  residual stream), so the deeper model computes the source's function at
  initialisation and training grows checks on top of it.

  ``lm_head``: also copy the source's LM head (both LM heads, tied alike): the target is then
  the source's language model, not a new head on its backbone (e.g. the revision model,
  fine-tuned from the policy). Without it an LM-head target keeps its random head.
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
  if lm_head:
    if not (source.config.head == target.config.head == "lm"
            and source.config.tie_embeddings == target.config.tie_embeddings):
      raise ValueError(f"lm_head=True copies an LM head into an LM head tied alike; got "
                       f"{source.config.head} (tied {source.config.tie_embeddings}) -> "
                       f"{target.config.head} (tied {target.config.tie_embeddings}).")
    if not source.config.tie_embeddings:
      pure["lm_head"] = src["lm_head"]
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
