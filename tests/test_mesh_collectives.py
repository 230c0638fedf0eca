"""No collective of the decode loop leaves a data shard (issue 24, item 18).

The sampling core runs its decode loop under ``shard_map`` over 'data': each data shard
loops over its own rows and leaves the loop when they are done, so a shard that is done
early runs no more collectives. A collective inside the loop whose participants span
several data shards then waits for a shard that never comes, and XLA aborts the process
after its rendezvous timeout (40 s on CPU, exit 134). Collectives over 'model' (tensor
parallelism) are fine: every device of a data shard runs the same iterations.

Which devices take part in a collective is what the runtime rendezvouses, not only what
the op's replica groups say: XLA's CPU runtime runs a collective-permute as one
collective over every device of the program, whatever its source-target pairs (the
abort that prompted this file waited in ``collective permute RendezvousKey{...,
global_devices=[0, 1, 2, 3, 4, 5, 6, 7], ...}`` for pairs that all stayed within a
data shard; the vocabulary-split top-p sort's reverse was partitioned into it). So any
collective-permute inside the loop fails the structural test.

* Structural: the optimized HLO of the decode program on data x model meshes, with
  every sampling option on; every collective inside a while loop has participant groups
  that each lie within one data shard.
* Behaviour: with every option on and data shards that finish many steps apart, the
  samples are those of one device (a regression would abort the test process).
"""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CACHE_SIZE
from conftest import NEW_TOKENS
from conftest import NUM_PROMPTS
from conftest import PAD_ID
from conftest import VOCAB
from conftest import as_np
from conftest import assert_close
from ttc_jax.parallel import DATA_AXIS
from ttc_jax.parallel import make_mesh
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import SpecialIds
from ttc_jax.sampling.core import row_keys
from ttc_jax.sampling.core import window_plan

B = NUM_PROMPTS
MESHES = [(4, 2), (2, 4)]  # (data, model) shards of the 8 devices
MESH_IDS = ["data4-model2", "data2-model4"]

# Every sampling option at once (temperature != 1, top-k, top-p, a minimum length,
# stopping at the step delimiter and at split delimiters).
EVERY_OPTION = SamplingParams(temperature=0.8, top_k=8, top_p=0.8, max_new_tokens=NEW_TOKENS,
                              min_new_tokens=2, stop_at_step=True)


@pytest.fixture(scope="module")
def every_id(special_ids):
  """The fixture's stop tokens plus a second EOS, suppressed ids and a step pair."""
  taken = {PAD_ID, *special_ids.eos_ids, *special_ids.step_ids}
  free = [i for i in range(1, VOCAB) if i not in taken]
  return SpecialIds(pad_id=PAD_ID, eos_ids=special_ids.eos_ids + (free[0],),
                    step_ids=special_ids.step_ids, suppress_ids=tuple(free[1:4]),
                    step_pairs=((tuple(free[4:12]), tuple(free[12:20])),))


@pytest.fixture(scope="module")
def cores(policy_model, every_id):
  """SamplingCores with ``every_id`` on one device and on each data x model mesh."""
  out = {(1, 1): SamplingCore(policy_model, every_id)}
  for num_data, num_model in MESHES:
    out[num_data, num_model] = SamplingCore(policy_model, every_id,
                                            mesh=make_mesh(num_data, num_model))
  return out


# ------------------------------------------------------------------------ HLO text
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
                "all-to-all", "ragged-all-to-all", "collective-broadcast")
_CALLEES = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation|"
                      r"branch_computations|called_computations)=(\{[^}]*\}|%[^\s,{}()]+)")


def _computations(hlo: str) -> dict[str, list[str]]:
  """Computation name -> its instruction lines."""
  comps, name = {}, None
  for line in hlo.splitlines():
    header = re.match(r"(?:ENTRY\s+)?%([^\s(]+)\s.*\{\s*$", line)
    if header:
      name = header.group(1)
      comps[name] = []
    elif line.startswith("}"):
      name = None
    elif name is not None and line.strip():
      comps[name].append(line)
  return comps


def _opcode(line: str) -> str | None:
  """The opcode of an instruction line ``[ROOT] %name = shape opcode(...)``."""
  m = re.match(r"\s*(?:ROOT\s+)?%\S+\s*=\s*", line)
  if not m:
    return None
  rest = line[m.end():]
  if rest.startswith("("):  # a tuple shape: skip to its closing parenthesis
    depth = 0
    for i, c in enumerate(rest):
      depth += (c == "(") - (c == ")")
      if depth == 0:
        rest = rest[i + 1:]
        break
  else:
    rest = rest.split(" ", 1)[1] if " " in rest else ""
  op = re.match(r"\s*([\w-]+)\(", rest)
  return op.group(1) if op else None


def _loop_computations(comps: dict[str, list[str]]) -> set[str]:
  """Every computation a while loop runs per iteration (bodies, conditions, and all they
  call, transitively)."""
  todo = []
  for lines in comps.values():
    for line in lines:
      if _opcode(line) == "while":
        todo += [m.group(1) for m in re.finditer(r"\b(?:body|condition)=%([^\s,{}()]+)", line)]
  seen = set()
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    for line in comps[name]:
      for value in _CALLEES.findall(line):
        todo += re.findall(r"%([^\s,{}()]+)", value)
  return seen


def _ints(text: str) -> list[int]:
  return [int(x) for x in re.findall(r"\d+", text)]


def participant_groups(line: str, num_devices: int) -> list[list[int]]:
  """The groups of logical device ids that rendezvous in the collective ``line``."""
  op = _opcode(line)
  if op.startswith("collective-permute"):
    return [list(range(num_devices))]  # one collective over every device, whatever its pairs
  m = re.search(r"\breplica_groups=", line)
  if not m:
    return [list(range(num_devices))]
  rest = line[m.end():]
  if rest.startswith("{"):  # {{0,1},{2,3}}; {} is every device
    depth = 0
    for i, c in enumerate(rest):
      depth += (c == "{") - (c == "}")
      if depth == 0:
        body = rest[1:i]
        break
    groups = [_ints(g) for g in re.findall(r"\{([^{}]*)\}", body)]
    return groups or [list(range(num_devices))]
  iota = re.match(r"\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", rest)
  if iota:  # [groups,size]<=[dims]T(perm): iota(dims), transposed, reshaped
    ids = np.arange(int(np.prod(_ints(iota.group(3))))).reshape(_ints(iota.group(3)))
    if iota.group(4):
      ids = ids.transpose(_ints(iota.group(4)))
    return ids.reshape(int(iota.group(1)), int(iota.group(2))).tolist()
  mesh = re.match(r"mesh\[([^\]]*)\](?:,\s*device_ids=\(([^)]*)\))?\s*\{([^}]*)\}", rest)
  if mesh:  # mesh['a'=2,'b'=4] {'b'} or {'b':(1)2}: the devices varying along the axes
    axes = [(n, int(s)) for n, s in re.findall(r"'?([\w.]+)'?=(\d+)", mesh.group(1))]
    ids = np.array(_ints(mesh.group(2))) if mesh.group(2) else np.arange(
        int(np.prod([s for _, s in axes])))
    refs = re.findall(r"'?([\w.]+)'?(?::\((\d+)\)(\d+))?", mesh.group(3))
    dims, grouped = [], []
    for name, size in axes:
      subs = sorted((int(p), int(s)) for n, p, s in refs if n == name and p)
      if any(n == name and not p for n, p, _ in refs):
        grouped.append(len(dims))
        dims.append(size)
        continue
      before = 1
      for pre, sub in subs:
        if pre != before:
          dims.append(pre // before)
          before = pre
        grouped.append(len(dims))
        dims.append(sub)
        before *= sub
      if before != size or not subs:
        dims.append(size // before)
    ids = ids.reshape(dims)
    keep = [d for d in range(len(dims)) if d not in grouped]
    size = int(np.prod([dims[d] for d in grouped]))
    return ids.transpose(keep + grouped).reshape(-1, size).tolist()
  raise AssertionError(f"unparsed replica groups in: {line.strip()[:300]}")


def loop_collectives(hlo: str, num_devices: int) -> list[tuple[str, list[list[int]], str]]:
  """(opcode, participant groups, instruction line) of every collective that runs inside
  a while loop of the compiled program ``hlo``."""
  comps = _computations(hlo)
  loops = _loop_computations(comps)
  assert loops, "no while loop in the compiled program"
  out = []
  for name in sorted(loops):
    for line in comps[name]:
      op = _opcode(line)
      if op and op.removesuffix("-start") in _COLLECTIVES:
        out.append((op, participant_groups(line, num_devices), line.strip()))
  return out


def test_participant_groups_of_each_replica_group_format():
  """The parser reads the formats XLA prints (lists, iota, mesh axes)."""
  line = "  %x = f32[4]{0} all-reduce(%a), channel_id=1, replica_groups={}, to_apply=%add"
  assert participant_groups(line, 4) == [[0, 1, 2, 3]]
  line = "  %x = f32[4]{0} all-reduce(%a), channel_id=1, replica_groups={{0,2},{1,3}}"
  assert participant_groups(line, 4) == [[0, 2], [1, 3]]
  line = "  %x = (f32[4]{0}, f32[4]{0}) all-to-all(%a, %b), replica_groups=[4,2]<=[8]"
  assert participant_groups(line, 8) == [[0, 1], [2, 3], [4, 5], [6, 7]]
  line = "  ROOT %x = f32[4]{0} all-gather(%a), replica_groups=[2,4]<=[4,2]T(1,0), dims={0}"
  assert participant_groups(line, 8) == [[0, 2, 4, 6], [1, 3, 5, 7]]
  line = ("  %x = f32[8]{0} all-gather(%a), replica_groups=mesh['a'=2,'b'=2,'c'=2] {'b'}, "
          "dimensions={0}")
  assert participant_groups(line, 8) == [[0, 2], [1, 3], [4, 6], [5, 7]]
  line = "  %x = f32[8]{0} all-gather(%a), replica_groups=mesh['a'=2,'b'=4] {'b':(1)2}"
  assert participant_groups(line, 8) == [[0, 2], [1, 3], [4, 6], [5, 7]]  # b's major half
  line = "  %x = f32[8]{0} all-gather(%a), replica_groups=mesh['a'=2,'b'=4] {'b':(2)2}"
  assert participant_groups(line, 8) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # b's minor half
  line = ("  %x = f32[8]{0} collective-permute(%a), channel_id=4, "
          "source_target_pairs={{0,1},{1,0}}")
  assert participant_groups(line, 4) == [[0, 1, 2, 3]]
  hlo = "\n".join([
      "%body (p: s32[]) -> s32[] {", "  %p = s32[] parameter(0)",
      "  ROOT %r = s32[] all-reduce(%p), replica_groups={{0,1}}, to_apply=%add", "}",
      "%cond (p: s32[]) -> pred[] {", "  ROOT %c = pred[] constant(true)", "}",
      "%add (x: s32[], y: s32[]) -> s32[] {", "  ROOT %s = s32[] add(%x, %y)", "}",
      "ENTRY %main (a: s32[]) -> s32[] {", "  %a = s32[] parameter(0)",
      "  %g = s32[] all-reduce(%a), replica_groups={}, to_apply=%add",
      "  ROOT %w = s32[] while(%g), condition=%cond, body=%body", "}"])
  assert [(op, groups) for op, groups, _ in loop_collectives(hlo, 2)] == [
      ("all-reduce", [[0, 1]])]


def compiled_sample_hlo(core: SamplingCore, sp: SamplingParams, tokens, valid) -> str:
  """The optimized HLO of the decode program ``core.sample`` runs (same arguments)."""
  state = core.prefill(tokens, valid, cache_size=CACHE_SIZE)
  b = state.num_rows
  assert state.padded_rows == b
  keys = core._put_rows(row_keys(0, np.arange(b)))
  active = core._put_rows(np.ones(b, bool))
  limits = core._put_rows(np.full(b, sp.max_new_tokens, np.int32))
  start = core._put_rows(np.zeros(b, np.int32))
  prev = core._put_rows(np.full(b, -1, np.int32))
  plan = window_plan(int(state.cache.index), sp.max_new_tokens, state.cache.size,
                     core.window_granularity)
  leave = jnp.asarray([sp.max_new_tokens, 0], jnp.int32)  # to the rows' ends
  return core._sample.lower(core.graphdef, core.params, state.cache, state.logits, keys, active,
                            limits, start, prev, leave, sp=sp, ids=core.ids, plan=plan,
                            width=sp.max_new_tokens, mesh=core.mesh).compile().as_text()


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_no_collective_of_the_decode_loop_leaves_a_data_shard(cores, prompts, shape):
  core = cores[shape]
  mesh = core.mesh
  hlo = compiled_sample_hlo(core, EVERY_OPTION, *prompts)
  # Logical device p of the program is mesh.devices.flat[p]; its data shard:
  data_axis = mesh.axis_names.index(DATA_AXIS)
  shard = [np.unravel_index(p, mesh.devices.shape)[data_axis] for p in range(mesh.size)]
  found = loop_collectives(hlo, mesh.size)
  leaving = [(op, groups, line[:400]) for op, groups, line in found
             if any(len({shard[p] for p in group}) > 1 for group in groups)]
  assert not leaving, (
      "collectives inside the decode loop span several data shards (a shard done early "
      "never joins them):\n" + "\n".join(f"{op} {groups}: {line}" for op, groups, line in leaving))
  # Not vacuous: the loop's tensor-parallel all-reduces over 'model' were found and read.
  num_model = shape[1]
  assert any(op.startswith("all-reduce") and all(len(g) == num_model for g in groups)
             for op, groups, _ in found), [op for op, _, _ in found]


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_data_shards_finishing_apart_match_1_device(cores, prompts, shape):
  """Every option on; the first data shard is done after at most two steps (limits, an
  inactive row, stop tokens) while another runs to max_new_tokens: same samples as on
  one device."""
  tokens, valid = prompts
  keys = row_keys(62, np.arange(B))
  limits = np.full(B, NEW_TOKENS, np.int32)
  limits[:4], limits[4:8] = 1, 2  # the first data shard of either mesh
  active = np.ones(B, bool)
  active[5] = False

  def sample(core):
    state = core.prefill(tokens, valid, cache_size=CACHE_SIZE)
    return as_np(core.sample(state, keys, EVERY_OPTION, active=active, limits=limits))

  ref = sample(cores[1, 1])
  got = sample(cores[shape])
  # The case this guards: data shards that leave the loop many steps apart, rows that
  # stop on a stop token and rows that run to the end.
  lengths = ref[2]
  per_shard = lengths.reshape(shape[0], -1).max(1)
  assert per_shard[0] <= 2 and per_shard.max() == NEW_TOKENS, lengths
  assert ref[3][8:].any() and (lengths[8:] == NEW_TOKENS).any(), (lengths, ref[3])
  np.testing.assert_array_equal(got[0], ref[0])
  assert_close(got[1], ref[1])
  np.testing.assert_array_equal(got[2], ref[2])
  np.testing.assert_array_equal(got[3], ref[3])
