"""The sampler gives the same samples on 1 device and on an 8-way 'data' mesh.

conftest.py gives every test process 8 fake CPU devices. Rows on the 8-device
mesh are compared with the session 1-device core ``core1`` running the same
prompts and keys (rows are independent of the batch, see test_sampling.py, so
a 5- or 13-row batch is compared with the matching rows of the 16-row run).
"""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import assert_close
from conftest import CACHE_SIZE
from conftest import GREEDY
from conftest import NUM_PROMPTS
from conftest import SAMPLE
from conftest import SAMPLE_STEP
from conftest import TOP_K
from conftest import TOP_K_P
from conftest import TOP_P
from conftest import as_np
from ttc_jax.models import memory
from ttc_jax.parallel import make_mesh
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import row_keys

B = NUM_PROMPTS


@pytest.fixture(scope="module")
def core8(policy_model, special_ids):
  assert len(jax.devices()) >= 8, (
      "needs 8 (fake) devices: XLA_FLAGS must be set before jax initialises (conftest.py)")
  mesh = make_mesh()
  assert dict(mesh.shape) == {"data": len(jax.devices()), "model": 1}
  core = SamplingCore(policy_model, special_ids, mesh=mesh)
  assert core.data_size == 8
  return core


def assert_same_samples(got, ref):
  tokens, logprobs, lengths, stopped = got
  np.testing.assert_array_equal(tokens, ref[0])
  assert_close(logprobs, ref[1])
  np.testing.assert_array_equal(lengths, ref[2])
  np.testing.assert_array_equal(stopped, ref[3])


def assert_row_sharded(x, num_devices=8):
  """x is split over 'data' along the batch axis, one distinct shard per device."""
  assert x.sharding.spec[0] == "data", x.sharding
  assert x.sharding.mesh.shape["data"] == num_devices
  shards = x.addressable_shards
  assert len(shards) == num_devices
  assert len({s.device for s in shards}) == num_devices
  assert all(s.data.shape[0] == x.shape[0] // num_devices for s in shards)


@pytest.mark.parametrize("sp", [GREEDY, TOP_K, TOP_P, SAMPLE_STEP],
                         ids=["greedy", "top_k", "top_p", "step"])
def test_8_devices_match_1_device(core1, core8, run, sp):
  keys = row_keys(50, np.arange(B))
  ref = as_np(run(core1, sp, keys=keys))
  out = run(core8, sp, keys=keys)
  assert_same_samples(as_np(out), ref)
  assert (ref[2] > 1).sum() >= B // 2  # real multi-token rows were compared
  # The work really was spread over the 8 devices.
  for x in (out.state.cache.k[0], out.state.cache.v[-1], out.state.cache.mask,
            out.state.cache.pos, out.state.logits):
    assert_row_sharded(x)


def test_gather_and_continue_match_1_device(core1, core8, run):
  keys = row_keys(51, np.arange(B))
  rows = np.array([3, 3, 0, 7, 7, 7, 1, 2, 12, 12, 15, 4, 4, 9, 9, 9])
  outs = {}
  for name, core in (("1", core1), ("8", core8)):
    first = run(core, SAMPLE_STEP, keys=keys)
    state = core.gather(first.state, rows)
    index = int(state.cache.index)  # before sample() donates the state
    second = core.sample(state, keys[rows], SAMPLE)
    outs[name] = (as_np(first), as_np(second), index, second)
  assert_same_samples(outs["8"][0], outs["1"][0])
  assert_same_samples(outs["8"][1], outs["1"][1])
  assert_row_sharded(outs["8"][3].state.cache.k[0])
  # Each shard's decode loop stops with its own rows; the shared write index is
  # still the furthest any row got, as on one device.
  assert outs["8"][2] == outs["1"][2]
  assert int(outs["8"][3].state.cache.index) == int(outs["1"][3].state.cache.index)
  # Gathered rows with the same parent and key sample the same continuation.
  np.testing.assert_array_equal(outs["8"][1][0][0], outs["8"][1][0][1])


@pytest.mark.parametrize("num_rows", [5, 13])
def test_batch_not_dividing_the_mesh_is_padded(core1, core8, run, num_rows):
  keys = row_keys(52, np.arange(B))
  ref_out = run(core1, TOP_K_P, keys=keys)
  ref = as_np(ref_out)
  rows = np.arange(num_rows)
  out = run(core8, TOP_K_P, keys=keys[rows], rows=rows)
  got = as_np(out)
  assert [x.shape[0] for x in got] == [num_rows] * 4
  assert_same_samples(got, tuple(x[rows] for x in ref))
  padded = -(-num_rows // 8) * 8
  assert out.state.num_rows == num_rows and out.state.padded_rows == padded
  assert_row_sharded(out.state.cache.k[0])
  # Gather the padded state to another odd size and continue; on 1 device the
  # same parents are gathered into a 16-row batch (extra rows: parent 0).
  parents = np.arange(num_rows)[::-1][:num_rows - 2]
  child = core8.gather(out.state, parents)
  assert child.num_rows == num_rows - 2 and child.padded_rows % 8 == 0
  cont = as_np(core8.sample(child, keys[parents], SAMPLE))
  assert [x.shape[0] for x in cont] == [num_rows - 2] * 4
  parents16 = np.concatenate([parents, np.zeros(B - len(parents), int)])
  ref_cont = as_np(core1.sample(core1.gather(ref_out.state, parents16), keys[parents16], SAMPLE))
  assert_same_samples(cont, tuple(x[:num_rows - 2] for x in ref_cont))


def test_prefill_state_is_sharded(core8, prompts):
  state = core8.prefill(*prompts, cache_size=CACHE_SIZE)
  assert_row_sharded(state.cache.k[0])
  assert_row_sharded(state.logits)
  # Parameters are replicated on every device (a mesh without 'model' shards).
  leaf = jax.tree.leaves(core8.params)[0]
  assert leaf.sharding.spec == P() and len(leaf.addressable_shards) == 8


def test_the_sampling_mesh_of_a_process(policy_model, special_ids):
  """--mesh: cores and scorers built without a mesh use the process's sampling mesh."""
  from ttc_jax import parallel
  assert dict(SamplingCore(policy_model, special_ids).mesh.shape) == {"data": 1, "model": 1}
  try:
    parallel.set_sampling_mesh(-1, 4)
    assert dict(parallel.local_mesh().shape) == {"data": 2, "model": 4}
    with pytest.raises(ValueError, match=r"model shards 3: expected a divisor of this "
                                         r"process's 8 devices"):
      parallel.set_sampling_mesh(1, 3)
    with pytest.raises(ValueError, match=r"--mesh 4,4 needs 16 devices; this process has 8"):
      parallel.set_sampling_mesh(4, 4)
  finally:
    parallel.set_sampling_mesh(1, 1)
  assert dict(parallel.local_mesh().shape) == {"data": 1, "model": 1}


def test_make_mesh():
  mesh = make_mesh(num_data=4, num_model=2)
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  one = make_mesh(devices=jax.devices()[:1])
  assert dict(one.shape) == {"data": 1, "model": 1}
  with pytest.raises(ValueError, match=r"data=16 x model=1 needs 16 devices; 8 available"):
    make_mesh(num_data=16)


# ------------------------------------------------------------------- tensor parallelism
@pytest.fixture(scope="module", params=[(2, 4), (4, 2)], ids=["data2-model4", "data4-model2"])
def core_tp(request, policy_model, special_ids):
  num_data, num_model = request.param
  return SamplingCore(policy_model, special_ids,
                      mesh=make_mesh(num_data=num_data, num_model=num_model))


def test_tensor_parallel_matches_1_device(core1, core_tp, run):
  """Heads, MLP units and the vocabulary split over 'model' (4 shards: 1 query head each,
  the 2 key/value heads replicated; 2 shards: key/value heads split too): same tokens."""
  cfg, m = core_tp.config, core_tp.mesh.shape["model"]
  keys = row_keys(53, np.arange(B))
  rows = np.array([3, 3, 0, 7, 7, 7, 1, 2, 12, 12, 15, 4, 4, 9, 9, 9])
  outs = {}
  for name, core in (("1", core1), ("tp", core_tp)):
    first = run(core, SAMPLE_STEP, keys=keys)
    second = core.sample(core.gather(first.state, rows, compact=True), keys[rows], GREEDY)
    outs[name] = (as_np(first), as_np(second), second)
  assert_same_samples(outs["tp"][0], outs["1"][0])
  assert_same_samples(outs["tp"][1], outs["1"][1])
  assert (outs["1"][1][2] > 1).sum() >= B // 2
  # Parameters and caches really are split: each device holds 1/m of the query heads
  # and of the MLP, and of the key/value heads when they divide.
  layer = core_tp.params["layers"][0]
  for name, axis, size in (("q", 1, cfg.num_heads * cfg.dim_per_head),
                           ("out", 0, cfg.num_heads * cfg.dim_per_head)):
    shard = layer["attn"][name][...].addressable_shards[0].data
    assert shard.shape[axis] == size // m, name
  assert layer["mlp"]["gate"][...].addressable_shards[0].data.shape[1] == cfg.mlp_dim // m
  kv_heads = outs["tp"][2].state.cache.k[0].addressable_shards[0].data.shape[1]
  assert kv_heads == (cfg.kv_heads // m if cfg.kv_heads % m == 0 else cfg.kv_heads)
  # The memory planner counts what each device really holds.
  held = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(core_tp.params))
  assert memory.param_bytes(cfg, m) == held
  cache = outs["tp"][2].state.cache
  held = sum(x.addressable_shards[0].data.nbytes
             for x in jax.tree.leaves((cache.k, cache.v, cache.mask, cache.pos)))
  assert memory.kv_cache_bytes(cfg, B, cache.size, core_tp.data_size, m) == held
  mask = outs["tp"][2].state.cache.mask
  assert mask.sharding.spec[0] == "data"
  assert {s.data.shape[0] for s in mask.addressable_shards} == {B // core_tp.data_size}


def test_a_model_that_does_not_split_is_named(policy_model, special_ids):
  with pytest.raises(ValueError, match=r"num_heads=4 does not split over a 'model' axis of 8"):
    SamplingCore(policy_model, special_ids, mesh=make_mesh(num_data=1, num_model=8))


@pytest.mark.parametrize("name", ["1", "8"])
def test_a_reset_row_reads_what_it_is_fed_next_as_a_fresh_prompt(core1, core8, prompts, name):
  """reset_rows empties one row's cache (an adapted PRM's full re-score): what it is fed
  next gives the logits of a fresh prefill of that text; the other rows are untouched,
  on one device and over 8 'data' shards; grow keeps every row's logits."""
  core = {"1": core1, "8": core8}[name]
  tokens, valid = prompts
  b = tokens.shape[0]
  state = core.prefill(tokens, valid, cache_size=CACHE_SIZE)
  state = core.grow(state, CACHE_SIZE + 8)
  before = np.asarray(state.logits)[:b]
  reset = np.zeros(b, bool)
  reset[1] = True
  state = core.reset_rows(state, reset)
  fresh = tokens[2][valid[2]]  # row 1 now reads row 2's prompt from position 0
  chunk = np.zeros((b, fresh.size), np.int32)
  chunk_valid = np.zeros((b, fresh.size), bool)
  chunk[1], chunk_valid[1] = fresh, True
  state = core.extend(state, chunk, chunk_valid)
  after = np.asarray(state.logits)[:b]
  assert_close(after[1], before[2])
  np.testing.assert_array_equal(np.delete(after, 1, 0), np.delete(before, 1, 0))
