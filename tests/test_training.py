"""Training loop: data order, objectives, checkpoints, SIGKILL resume, bad input."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import pipeline_utils as pu
from conftest import assert_close
from ttc_jax.models import checkpoints
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.parallel import make_mesh
from ttc_jax.pipeline import artifacts
from ttc_jax.training import data
from ttc_jax.training import trainer


# ---------------------------------------------------------------------------- data order
def test_batch_order_is_a_function_of_seed_and_step():
  n, b = 50, 8
  a = [data.batch_indices(n, b, 3, s) for s in range(20)]
  again = [data.batch_indices(n, b, 3, s) for s in reversed(range(20))][::-1]
  for x, y in zip(a, again):
    np.testing.assert_array_equal(x, y)
  other_seed = np.concatenate([data.batch_indices(n, b, 4, s) for s in range(6)])
  assert not np.array_equal(np.concatenate(a[:6]), other_seed)


def test_each_epoch_visits_every_example_once():
  n, b = 40, 8  # 5 batches per epoch
  flat = np.concatenate([data.batch_indices(n, b, 0, s) for s in range(15)])
  for epoch in range(3):
    assert sorted(flat[epoch * n:(epoch + 1) * n]) == list(range(n))
  assert not np.array_equal(flat[:n], flat[n:2 * n])  # reshuffled per epoch


def test_batches_straddle_epoch_boundaries():
  n, b = 10, 4  # positions 8..11 cross into epoch 1
  flat = np.concatenate([data.batch_indices(n, b, 0, s) for s in range(5)])
  assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_bad_batch_arguments():
  with pytest.raises(ValueError, match="batch_size"):
    data.batch_indices(10, 0, 0, 0)


# ------------------------------------------------------------------------- datasets
class _Tok:
  pad_id, bos_id, eos_id = 0, 1, 2

  def encode(self, text):
    return [10 + ord(c) % 40 for c in text]


class _Task:
  step_delimiter = "\n"

  def format_prompt(self, p):
    return p.question + "\n"


class _P:
  def __init__(self, q, s):
    self.question, self.solution = q, s


def test_sft_dataset_masks_the_prompt_and_covers_eos():
  ds = data.sft_dataset(_Task(), _Tok(), [_P("12", "a\nb"), _P("3", "xyz")], seq_len=12)
  # Row 0: BOS '1' '2' '\n' | 'a' '\n' 'b' EOS
  np.testing.assert_array_equal(ds.valid[0], [1] * 8 + [0] * 4)
  np.testing.assert_array_equal(ds.weights[0], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
  assert ds.tokens[0, 7] == _Tok.eos_id and ds.tokens[0, 0] == _Tok.bos_id
  assert ds.weights[1].sum() == 4  # 'x' 'y' 'z' EOS


def test_sft_dataset_refuses_to_truncate():
  with pytest.raises(ValueError, match=r"row 1 .* more than seq_len=6"):
    data.sft_dataset(_Task(), _Tok(), [_P("1", "2"), _P("123", "4567")], seq_len=6)


def test_value_dataset_labels_step_ends_and_skips_nan():
  ds = data.value_dataset([[1, 5, 6, 4, 7, 2], [1, 5, 2]], [[3, 5], [2]],
                          [[0.25, 1.0], [np.nan]], seq_len=8)
  np.testing.assert_array_equal(np.nonzero(ds.weights[0])[0], [3, 5])
  np.testing.assert_allclose(ds.targets[0, [3, 5]], [0.25, 1.0])
  assert ds.weights[1].sum() == 0
  with pytest.raises(ValueError, match=r"row 0: label 1.5 outside \[0, 1\]"):
    data.value_dataset([[1, 2]], [[1]], [[1.5]], seq_len=4)
  with pytest.raises(ValueError, match=r"row 0: step end 7 outside"):
    data.value_dataset([[1, 2]], [[7]], [[1.0]], seq_len=4)
  # Dense: every token of a step (the first starts after the prompt) has its label.
  dense = data.value_dataset([[1, 5, 6, 4, 7, 8, 4, 9, 2]], [[3, 6, 8]], [[0.5, np.nan, 0.0]],
                             seq_len=12, every_token=True, prompt_lengths=[2])
  np.testing.assert_array_equal(np.nonzero(dense.weights[0])[0], [2, 3, 7, 8])
  np.testing.assert_allclose(dense.targets[0, [2, 3, 7, 8]], [0.5, 0.5, 0.0, 0.0])
  with pytest.raises(ValueError, match="prompt length"):
    data.value_dataset([[1, 2]], [[1]], [[1.0]], seq_len=4, every_token=True)


# ------------------------------------------------------------------------ objectives
def _tiny(head="lm", seed=0):
  cfg = TransformerConfig(vocab_size=16, d_model=16, num_layers=1, num_heads=2,
                          num_kv_heads=1, mlp_dim=32, max_seq_len=16, head=head)
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def _train_cfg(**kw):
  c = ml_collections.ConfigDict(dict(
      steps=40, batch_size=8, learning_rate=1e-2, warmup_steps=2, final_lr_fraction=0.1,
      weight_decay=0.0, b1=0.9, b2=0.98, grad_clip=1.0, checkpoint_every=20, log_every=10,
      seed=0))
  c.update(kw)
  return c


def _copy_task(n=32, length=10, seed=0):
  """Sequences whose second half repeats the first half: learnable by attention."""
  rs = np.random.RandomState(seed)
  half = rs.randint(3, 16, (n, length // 2))
  tokens = np.concatenate([half, half], 1).astype(np.int32)
  weights = np.zeros(tokens.shape, np.float32)
  weights[:, length // 2:] = 1
  return data.TokenDataset(tokens=tokens, valid=np.ones_like(tokens, bool), weights=weights)


def _metrics(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_lm_training_reduces_loss(tmp_path):
  model = _tiny()
  trainer.train(model, _copy_task(), _train_cfg(steps=60), str(tmp_path), objective="lm",
                log_fn=lambda s: None)
  m = _metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in m] == [10, 20, 30, 40, 50, 60]
  assert m[-1]["loss"] < 0.6 * m[0]["loss"]


def test_value_training_fits_soft_labels(tmp_path):
  rs = np.random.RandomState(1)
  tokens = rs.randint(3, 16, (32, 6)).astype(np.int32)
  target = (tokens[:, -1] % 4) / 3.0  # a function of the last token
  weights = np.zeros(tokens.shape, np.float32)
  weights[:, -1] = 1
  targets = np.zeros(tokens.shape, np.float32)
  targets[:, -1] = target
  ds = data.TokenDataset(tokens=tokens, valid=np.ones_like(tokens, bool), weights=weights,
                         targets=targets)
  model = _tiny("value")
  trainer.train(model, ds, _train_cfg(steps=150, learning_rate=3e-2), str(tmp_path),
                objective="value", log_fn=lambda s: None)
  values, _ = model(tokens)
  pred = np.asarray(jax.nn.sigmoid(values[:, -1]))
  assert np.abs(pred - target).mean() < 0.12
  assert np.corrcoef(pred, target)[0, 1] > 0.9


def _params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("objective", ["value", "lm"])
def test_a_held_out_evaluation_does_not_depend_on_its_batch_size(objective):
  """trainer.evaluate: the mean over the dataset's weighted positions, whatever the batch size
  (the last batch padded at weight 0), as one batch of everything gives it."""
  ds = _ragged(n=10, width=16, seed=3)
  model = _tiny(objective)
  whole = trainer.evaluate(model, ds, objective=objective, batch_size=len(ds))
  loss, _ = trainer.OBJECTIVES[objective](model, ds.batch(np.arange(len(ds))))
  assert_close(whole["loss"], float(loss))
  for bs in (1, 3, 4):
    got = trainer.evaluate(model, ds, objective=objective, batch_size=bs)
    assert_close(got["loss"], whole["loss"])
    assert_close(got["accuracy"], whole["accuracy"])
  with pytest.raises(ValueError, match="objective='dpo'"):
    trainer.evaluate(model, ds, objective="dpo", batch_size=2)
  # Another model of the same architecture (another checkpoint) reuses the compiled program.
  before = trainer._metrics_fn.cache_info().misses  # pylint: disable=protected-access
  trainer.evaluate(_tiny(objective, seed=1), ds, objective=objective, batch_size=3)
  assert trainer._metrics_fn.cache_info().misses == before  # pylint: disable=protected-access


# ---------------------------------------------------------------------- packed rows
def _ragged(n=12, width=16, seed=0, group=1):
  """Right-padded rows of 1..width tokens (lengths chosen to leave no packing slack),
  every per-position field random."""
  rs = np.random.RandomState(seed)
  lengths = rs.randint(1, width + 1, n)
  lengths[:3] = (width, 1, 2)  # a full row, a row of one token (never predicts), a pair
  valid = np.arange(width)[None] < lengths[:, None]
  tokens = np.where(valid, rs.randint(3, 16, (n, width)), 0).astype(np.int32)
  weights = (valid * rs.rand(n, width)).astype(np.float32)
  return data.TokenDataset(
      tokens=tokens, valid=valid, weights=weights,
      targets=(valid * rs.rand(n, width)).astype(np.float32),
      ref_logprobs=(valid * -rs.rand(n, width)).astype(np.float32),
      labels=rs.randint(0, 2, n).astype(np.float32), group=group)


def test_packing_puts_each_row_once_and_refuses_what_does_not_fit():
  ds = _ragged(n=24, width=16)
  batch = ds.batch(np.arange(24))
  packed = data.pack(batch, width=24, rows_multiple=4)
  assert packed["tokens"].shape[0] % 4 == 0 and packed["tokens"].shape[1] == 24
  assert packed["valid"].sum() == batch["valid"].sum()
  assert packed["tokens"].shape[0] * 24 < batch["valid"].size  # fewer tokens computed
  for i in range(24):  # each row's tokens, contiguous and in order, under its own id
    at = packed["segments"] == i + 1
    r = np.flatnonzero(at.any(1))
    assert len(r) == 1
    cols = np.flatnonzero(at[r[0]])
    assert np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols)))
    for name in ("tokens", "weights", "targets", "ref_logprobs"):
      np.testing.assert_array_equal(packed[name][r[0], cols], batch[name][i][batch["valid"][i]])
  assert not packed["valid"][packed["segments"] == 0].any()
  np.testing.assert_array_equal(packed["labels"], batch["labels"])
  with pytest.raises(ValueError, match="width=8"):
    data.pack(batch, width=8)
  holes = dict(batch, valid=batch["valid"].copy())
  holes["valid"][0, 3] = False
  with pytest.raises(ValueError, match="right padded"):
    data.pack(holes, width=24)


@pytest.mark.parametrize("objective,head,group", [("lm", "lm", 1), ("value", "value", 1),
                                                  ("implicit_prm", "lm", 1), ("dpo", "lm", 2)])
def test_a_packed_batch_has_the_unpacked_loss_and_gradients(objective, head, group):
  """Several sequences per row: each token's output, the loss per token, the per-row
  rewards of the implicit objectives and the gradients equal those of one row each."""
  ds = _ragged(n=12, width=16, seed=1, group=group)
  model = _tiny(head)
  batch = ds.batch(np.arange(len(ds)))
  packed = data.pack(batch, width=40, rows_multiple=4)
  assert packed["tokens"].shape[0] < batch["tokens"].shape[0]
  options = {"beta": 0.5} if objective in ("implicit_prm", "dpo") else {}
  graphdef, params = nnx.split(model)

  def loss(p, b):
    return trainer.OBJECTIVES[objective](nnx.merge(graphdef, p), b, **options)

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))  # one program per shape, not per op
  (a, ma), ga = grad(params, jax.tree.map(np.asarray, batch))
  (b, mb), gb = grad(params, packed)
  assert_close(b, a)
  assert_close(mb["accuracy"], ma["accuracy"])
  for x, y in zip(jax.tree.leaves(gb), jax.tree.leaves(ga)):
    assert_close(x, y)
  if objective in ("implicit_prm", "dpo"):
    assert_close(trainer.implicit_rewards(nnx.merge(graphdef, params), packed, 0.5),
                 trainer.implicit_rewards(nnx.merge(graphdef, params), batch, 0.5))
  # Each token's output as in its own row.
  forward = jax.jit(lambda p, t, v, s: nnx.merge(graphdef, p)(t, v, segments=s)[0])
  out = forward(params, packed["tokens"], packed["valid"], packed["segments"])
  ref = forward(params, batch["tokens"], batch["valid"], None)
  for i in range(batch["tokens"].shape[0]):
    assert_close(np.asarray(out)[packed["segments"] == i + 1],
                 np.asarray(ref)[i][batch["valid"][i]])


def test_packed_training_follows_unpacked_training(tmp_path):
  ds = _ragged(n=64, width=16, seed=2)
  ds = data.TokenDataset(tokens=ds.tokens, valid=ds.valid, weights=ds.weights)
  mesh = make_mesh(devices=jax.devices()[:1])
  one = trainer.train(_tiny(), ds, _train_cfg(steps=6, batch_size=32), str(tmp_path / "one"),
                      objective="lm", mesh=mesh, log_fn=lambda s: None)
  packed = trainer.train(_tiny(), ds, _train_cfg(steps=6, batch_size=32, pack_width=32),
                         str(tmp_path / "packed"), objective="lm", mesh=mesh,
                         log_fn=lambda s: None)
  eight = trainer.train(_tiny(), ds, _train_cfg(steps=6, batch_size=32, pack_width=32),
                        str(tmp_path / "eight"), objective="lm", mesh=make_mesh(),
                        log_fn=lambda s: None)
  for x, y, z in zip(_params(one), _params(packed), _params(eight)):
    assert_close(np.asarray(y), np.asarray(x))
    assert_close(np.asarray(z), np.asarray(x))
  runs = trainer.THROUGHPUT[-3:-1]
  assert runs[1]["padding_share"] < runs[0]["padding_share"]
  assert runs[1]["tokens"] == runs[0]["tokens"]
  with pytest.raises(ValueError, match="pack_width=-1"):
    trainer.train(_tiny(), ds, _train_cfg(pack_width=-1), str(tmp_path / "bad"),
                  objective="lm")


def test_a_train_step_is_optax_adamw_on_its_schedule(tmp_path):
  # The step takes its learning rate as an argument (make_optimizer); the updates are
  # optax's adamw chain with the warmup/cosine schedule, weight decay on matrices only.
  cfg = _train_cfg(steps=6, warmup_steps=2, weight_decay=0.1, checkpoint_every=100, log_every=2)
  ds = _copy_task()
  graphdef, params = nnx.split(_tiny())
  trained = trainer.train(_tiny(), ds, cfg, str(tmp_path), objective="lm",
                          log_fn=lambda s: None)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, cfg.warmup_steps, cfg.steps,
      cfg.learning_rate * cfg.final_lr_fraction)
  tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                   optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                               mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  state = tx.init(params)
  # The optimizer state keeps adamw's layout: checkpoints written before the learning rate
  # left the compiled step resume.
  assert (jax.tree.structure(trainer.make_optimizer(cfg)[0].init(params))
          == jax.tree.structure(state))
  loss = lambda p, batch: trainer.OBJECTIVES["lm"](nnx.merge(graphdef, p), batch,  # noqa: E731
                                                   label_smoothing=0.0)
  for step in range(cfg.steps):
    grads, _ = jax.grad(loss, has_aux=True)(params, trainer._host_batch(ds, cfg, step))
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for x, y in zip(_params(trained), jax.tree.leaves(params)):
    assert_close(x, y)
  lrs = [r["lr"] for r in _metrics(tmp_path / "metrics.jsonl")]
  assert lrs == [float(schedule(s)) for s in range(cfg.log_every - 1, cfg.steps, cfg.log_every)]


def test_runs_of_one_shape_share_one_compiled_step(tmp_path, monkeypatch):
  # The schedule is not in the compiled step: runs that differ only in their learning
  # rate, warmup, length or final fraction (the revision model's rounds) trace it once.
  traces = []

  @functools.wraps(trainer._train_step)
  def counted(*args, **kwargs):
    traces.append(kwargs["objective"])
    return trainer._train_step(*args, **kwargs)

  monkeypatch.setattr(trainer, "_TRAIN_STEP", jax.jit(
      counted, static_argnums=(0,), static_argnames=("tx", "objective", "options"),
      donate_argnums=(1, 2)))
  ds = _copy_task()
  run = lambda name, **kw: trainer.train(  # noqa: E731
      _tiny(seed=len(name)), ds, _train_cfg(**kw), str(tmp_path / name), objective="lm",
      log_fn=lambda s: None)
  run("a", steps=4)
  assert len(traces) == 1
  run("bb", steps=6, learning_rate=3e-3, warmup_steps=1, final_lr_fraction=0.5)
  assert len(traces) == 1
  run("ccc", steps=3, b2=0.95)  # another optimizer: another program
  assert len(traces) == 2


def test_resume_is_bit_identical_in_process(tmp_path):
  ds = _copy_task()
  full = trainer.train(_tiny(), ds, _train_cfg(steps=30, checkpoint_every=10),
                       str(tmp_path / "a"), objective="lm", log_fn=lambda s: None)
  # Stop after 20 steps (a run with steps=20 would decay the lr differently, so
  # instead train to 30 and delete the last checkpoint to simulate dying at 25).
  trainer.train(_tiny(), ds, _train_cfg(steps=30, checkpoint_every=10), str(tmp_path / "b"),
                objective="lm", log_fn=lambda s: None)
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "30")
  # The same checkpoint in the fused layout of older ttc_jax (qkv, gate_up) resumes too.
  shutil.copytree(tmp_path / "b", tmp_path / "c")
  _rewrite_fused(str(tmp_path / "c" / "checkpoints"), 20)
  for name in ("b", "c"):
    logs = []
    resumed = trainer.train(_tiny(seed=5), ds, _train_cfg(steps=30, checkpoint_every=10),
                            str(tmp_path / name), objective="lm", log_fn=logs.append)
    assert any("resumed from step 20" in line for line in logs)
    for x, y in zip(_params(full), _params(resumed)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r["step"] for r in _metrics(tmp_path / name / "metrics.jsonl")] == [10, 20, 30]
  # A finished model of the fused layout loads as well.
  _rewrite_fused(str(tmp_path / "a" / "checkpoints"), 30)
  loaded = checkpoints.restore_params(str(tmp_path / "a" / "checkpoints"),
                                      checkpoints.abstract_model(full.config), step=30)
  for x, y in zip(_params(full), _params(loaded)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _fuse(tree):
  """Params / optimizer state as older ttc_jax saved them: q|k|v and gate|up fused."""
  if isinstance(tree, (list, tuple)):
    return type(tree)(_fuse(v) for v in tree)
  if not isinstance(tree, dict):
    return tree
  out = {k: _fuse(v) for k, v in tree.items()
         if k not in ("q", "k", "v", "q_bias", "k_bias", "v_bias", "gate", "up")}
  for fused, parts in (("qkv", ("q", "k", "v")), ("gate_up", ("gate", "up"))):
    if all(p in tree for p in parts):
      out[fused] = {"value": np.concatenate([np.asarray(tree[p]["value"]) for p in parts], -1)}
  return out


def _rewrite_fused(directory, step):
  import orbax.checkpoint as ocp
  mgr = checkpoints.manager(directory)
  names = [n for n in ("params", "opt_state") if os.path.isdir(os.path.join(directory, str(step), n))]
  raw = mgr.restore(step, args=ocp.args.Composite(
      **{n: ocp.args.StandardRestore() for n in names}, meta=ocp.args.JsonRestore()))
  mgr.delete(step)
  # Placed as the trainer places its state (a NamedSharding of a one-device mesh): the
  # checkpoint records that sharding, as real ones do.
  placed = jax.sharding.NamedSharding(make_mesh(devices=jax.devices()[:1]),
                                      jax.sharding.PartitionSpec())
  put = lambda tree: jax.tree.map(lambda x: jax.device_put(np.asarray(x), placed), tree)
  checkpoints.save(mgr, step, **{n: ocp.args.StandardSave(put(_fuse(raw[n]))) for n in names},
                   meta=ocp.args.JsonSave(raw["meta"]))
  mgr.close()
  from etils import epath
  meta = ocp.StandardCheckpointHandler().metadata(epath.Path(directory) / str(step) / "params")
  assert "'qkv'" in str(meta) and "'gate_up'" in str(meta) and "'q'" not in str(meta)


def test_train_on_an_8_device_mesh_matches_1_device(tmp_path):
  ds = _copy_task()
  one = trainer.train(_tiny(), ds, _train_cfg(steps=5), str(tmp_path / "one"), objective="lm",
                      mesh=make_mesh(devices=jax.devices()[:1]), log_fn=lambda s: None)
  eight = trainer.train(_tiny(), ds, _train_cfg(steps=5), str(tmp_path / "eight"),
                        objective="lm", mesh=make_mesh(), log_fn=lambda s: None)
  assert len(jax.devices()) == 8
  for x, y in zip(_params(one), _params(eight)):
    assert_close(np.asarray(x), np.asarray(y))


def test_batch_must_divide_the_data_axis(tmp_path):
  with pytest.raises(ValueError, match=r"batch_size=12 must be a multiple of .*'data' axis \(8\)"):
    trainer.train(_tiny(), _copy_task(), _train_cfg(batch_size=12), str(tmp_path),
                  objective="lm", mesh=make_mesh())


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
  trainer.train(_tiny(), _copy_task(), _train_cfg(steps=10, checkpoint_every=10), str(tmp_path),
                objective="lm", log_fn=lambda s: None)
  step_dir = tmp_path / "checkpoints" / "10"
  for root, _, files in os.walk(step_dir / "params"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint step 10 in .*checkpoints"):
    trainer.train(_tiny(), _copy_task(), _train_cfg(steps=20, checkpoint_every=10),
                  str(tmp_path), objective="lm", log_fn=lambda s: None)
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint step 10 in .*checkpoints"):
    checkpoints.restore_params(str(tmp_path / "checkpoints"), _tiny())


@pytest.mark.parametrize("kwargs, match", [
    (dict(warmup_steps=40), r"train.warmup_steps=40 must be an integer in \[0, train.steps=40\)"),
    (dict(steps=0), r"train.steps=0 must be an integer > 0"),
    (dict(learning_rate=0.0), r"train.learning_rate=0.0 must be > 0"),
])
def test_a_train_section_that_cannot_run_is_named(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    trainer.train(_tiny(), _copy_task(), _train_cfg(**kwargs), str(tmp_path), objective="lm")
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------- the policy stage (subprocess)
def _final_params(workdir, stage="policy"):
  art = artifacts.load_model(os.path.join(workdir, stage, "latest"))
  return [np.asarray(x) for x in _params(art.model)]


@pytest.mark.e2e
def test_sigkill_and_rerun_gives_bit_identical_params(tmp_path_factory, tmp_path):
  # The reference: the tiny study's policy (the same config, trained without a kill); the
  # killed run starts from its tokenizer and data.
  ref, killed = pu.shared_study(tmp_path_factory), str(tmp_path / "killed")
  os.makedirs(killed)
  for stage in ("tokenizer", "data"):
    shutil.copytree(os.path.join(ref, stage), os.path.join(killed, stage), symlinks=True)
  # Killed while training, right after its first checkpoint (step 12 of 24; a hold point).
  marker = str(tmp_path / "held")
  proc = subprocess.Popen(pu.cli("policy", killed), env=pu.held_env("checkpoint:policy:12",
                                                                     marker),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  pu.kill_when(proc, marker)
  assert not os.path.exists(os.path.join(killed, "policy", "latest"))
  out = pu.run(pu.cli("policy", killed))
  assert "policy: resuming" in out.stderr and "resumed from step" in out.stderr
  for x, y in zip(_final_params(ref), _final_params(killed)):
    np.testing.assert_array_equal(x, y)
  m = [json.loads(line)["step"]
       for line in open(os.path.join(killed, "policy", "latest", "metrics.jsonl"))]
  assert m == sorted(set(m)) and m[-1] == 24
  # The artifact describes itself: architecture and tokenizer from its own files.
  desc = json.load(open(os.path.join(killed, "policy", "latest", "model.json")))
  assert desc["config"]["d_model"] == 32 and desc["tokenizer"]["path"].endswith("tokenizer.model")


def test_bucketed_batches_cover_each_epoch_and_group_lengths():
  rs = np.random.RandomState(0)
  lengths = rs.randint(5, 100, 64)
  b, per_epoch = 4, 16
  epoch0 = [data.bucketed_batch_indices(lengths, b, 7, s, pool_batches=4) for s in range(16)]
  assert sorted(np.concatenate(epoch0).tolist()) == list(range(64))
  spread = np.mean([np.ptp(lengths[i]) for i in epoch0])
  random_spread = np.mean([np.ptp(lengths[data.batch_indices(64, b, 7, s)]) for s in range(16)])
  assert spread < 0.5 * random_spread
  again = data.bucketed_batch_indices(lengths, b, 7, 20, pool_batches=4)
  np.testing.assert_array_equal(again, data.bucketed_batch_indices(lengths, b, 7, 20, 4))
  assert not np.array_equal(again, epoch0[20 - per_epoch])  # next epoch is reshuffled


def test_batches_are_cut_to_the_padding_multiple():
  ds = _copy_task(n=8, length=10)
  assert ds.batch(np.arange(4), pad_multiple=4)["tokens"].shape == (4, 10)
  short = data.TokenDataset(tokens=np.ones((2, 40), np.int32),
                            valid=np.arange(40)[None] < np.array([[5], [9]]),
                            weights=np.zeros((2, 40), np.float32))
  np.testing.assert_array_equal(short.lengths, [5, 9])
  assert short.batch(np.array([0, 1]), pad_multiple=8)["tokens"].shape == (2, 16)
  assert short.batch(np.array([0]), pad_multiple=8)["tokens"].shape == (1, 8)


def test_training_leaves_the_callers_arrays_alive(tmp_path):
  """The train step donates its buffers; models sharing arrays with the trained one survive."""
  source = _tiny()
  model = _tiny(seed=1)
  nnx.update(model, nnx.state(source))  # the two models now share arrays
  trainer.train(model, _copy_task(), _train_cfg(steps=3), str(tmp_path), objective="lm",
                log_fn=lambda s: None)
  for leaf in _params(source):
    assert not leaf.is_deleted()
    np.asarray(leaf)


_FAR_AHEAD = """
import sys
import ml_collections
import numpy as np
from flax import nnx
from ttc_jax.models.transformer import Transformer, TransformerConfig
from ttc_jax.training import data as data_lib, trainer
tokens = np.random.RandomState(0).randint(1, 64, (64, 48)).astype(np.int32)
dataset = data_lib.TokenDataset(tokens=tokens, valid=np.ones_like(tokens, bool),
                                weights=np.ones(tokens.shape, np.float32))
steps = 120  # a log line and a checkpoint only at the end: nothing else waits on the devices
cfg = ml_collections.ConfigDict(dict(
    steps=steps, batch_size=8, learning_rate=1e-3, warmup_steps=1, final_lr_fraction=0.1,
    weight_decay=0.0, b1=0.9, b2=0.98, grad_clip=1.0, checkpoint_every=steps, log_every=steps,
    seed=0, bucket_pool_batches=0))
model = Transformer(TransformerConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4,
                                      num_kv_heads=2, mlp_dim=256, max_seq_len=64),
                    rngs=nnx.Rngs(0))
trainer.train(model, dataset, cfg, sys.argv[1], objective="lm", log_fn=lambda m: None)
print("trained")
"""


@pytest.mark.e2e
def test_training_far_ahead_of_its_devices_does_not_deadlock(tmp_path):
  """Issue 24's CI flake (an XLA:CPU abort in the trained fixture of test_revisions): a loop
  that dispatched more than 32 train steps on 8 CPU devices ahead of the host deadlocked
  XLA:CPU (the 33rd launch blocks a thread of the pool that the running step's gradient
  all-reduce needs; XLA aborts after its 40 s rendezvous timeout). The trainer keeps at most
  trainer.MAX_STEPS_IN_FLIGHT steps in flight. Before the fix this run aborted in 3 of 3
  tries on a 2-core machine."""
  env = pu.env()
  env["XLA_FLAGS"] = env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8"
  out = subprocess.run([sys.executable, "-c", _FAR_AHEAD, str(tmp_path / "out")], env=env,
                       capture_output=True, text=True)
  assert out.returncode == 0 and "trained" in out.stdout, out.stderr[-3000:]
