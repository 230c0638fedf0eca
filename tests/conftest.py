"""Shared fixtures for the model / sampling / sharding tests.

Every test process gets 8 fake CPU devices and unoptimised (fast-compiling) XLA
code (XLA_FLAGS is set here, before jax initialises its backend), so the sharding
tests can build an 8-way 'data' mesh while the other tests run on a 1-device mesh
(the SamplingCore default).

Compiled functions are cached per SamplingCore instance and static arguments,
so the expensive objects (the tiny policy model, its SamplingCore, the jitted
reference forward pass) are session-scoped and the tests reuse a few standard
shapes: 16 prompts of 8 tokens, a 40-slot cache, 16 new tokens per call.
Nothing here depends on test order or writes files (pytest-xdist safe).
"""

import os
import re

_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
# Tests check what programs compute, not how fast. Compiling is about half of the
# suite's CPU time on an empty compilation cache (as on CI: 960 s of CPU cold, 460 s
# warm), so XLA:CPU compiles the cheap way: no LLVM optimisation passes, and fusions
# through the classic elemental emitters instead of the MLIR fusion emitters (on
# tests/test_search.py, cold: 340 programs in 28.0 s of backend compile -> 12.5 s;
# the tests compare relative to the values' scale, so either emitter's rounding passes).
# Launch scripts and the notebook kernel run by the tests inherit these flags.
_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false",
                  "--xla_llvm_disable_expensive_passes=true")
_flags = re.sub(r"--xla_(force_host_platform_device_count|backend_optimization_level|"
                r"cpu_use_fusion_emitters|llvm_disable_expensive_passes)=\S*", "",
                os.environ.get("XLA_FLAGS", ""))
os.environ["XLA_FLAGS"] = " ".join([_flags, *_COMPILE_FLAGS, _DEVICE_FLAG]).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ttc_jax import host  # noqa: E402

# Compiled programs persist across test processes (and runs): see host.py.
host.enable_compilation_cache(os.environ.get("TTC_JAX_CACHE_DIR") or host.default_cache_dir())
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from ttc_jax.models.transformer import Transformer  # noqa: E402
from ttc_jax.models.transformer import TransformerConfig  # noqa: E402
from ttc_jax.sampling.core import SamplingCore  # noqa: E402
from ttc_jax.sampling.core import SamplingParams  # noqa: E402
from ttc_jax.sampling.core import SpecialIds  # noqa: E402
from ttc_jax.sampling.core import row_keys  # noqa: E402

# Standard shapes shared by test_sampling.py and test_sharding.py (reusing them
# reuses the compiled prefill / decode loop of the session SamplingCore).
VOCAB = 64
NUM_PROMPTS = 16
PROMPT_LEN = 8
NEW_TOKENS = 16
CACHE_SIZE = PROMPT_LEN + 2 * NEW_TOKENS  # Room for one continuation call.
PAD_ID = 0

# Standard sampling parameters (hashable statics: equal params share a compile).
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
GREEDY_STEP = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS, stop_at_step=True)
SAMPLE = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS)
SAMPLE_STEP = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, stop_at_step=True)
TOP_K = SamplingParams(temperature=1.0, top_k=5, max_new_tokens=NEW_TOKENS)
TOP_P = SamplingParams(temperature=1.0, top_p=0.7, max_new_tokens=NEW_TOKENS)
TOP_K_P = SamplingParams(temperature=0.8, top_k=8, top_p=0.8, max_new_tokens=NEW_TOKENS)


def policy_config() -> TransformerConfig:
  # init_std=0.3 (not the 0.02 default): with d_model=32 the logits then have a
  # std of ~2, so next-token distributions are peaked enough that greedy argmax
  # margins are not razor-thin and the stop tokens below are emitted often,
  # yet broad enough for the statistical tests to see many tokens.
  return TransformerConfig(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4,
                           num_kv_heads=2, mlp_dim=64, max_seq_len=64, init_std=0.3)


# float32 results differ between CPU models (kernels sum in different orders): a
# fresh clone on an AMD EPYC was off by 1.01e-5 on logits of scale ~5. Every
# comparison of float32 model outputs is relative to the compared values' scale,
# with a tolerance far above that rounding and far below any real difference.
F32_REL_TOL = 1e-4


def assert_close(actual, desired, tol: float = F32_REL_TOL, err_msg: str = ""):
  """``actual`` == ``desired`` within ``tol`` times the scale of ``desired`` (at least 1)."""
  actual = np.asarray(actual, np.float64)
  desired = np.asarray(desired, np.float64)
  scale = max(1.0, float(np.abs(desired).max())) if desired.size else 1.0
  np.testing.assert_allclose(actual, desired, rtol=0, atol=tol * scale, err_msg=err_msg)


def make_prompts(seed: int, num: int = NUM_PROMPTS, length: int = PROMPT_LEN):
  """Left-padded prompts (num, length) of 2..length real tokens; row 0 is full."""
  rs = np.random.RandomState(seed)
  lens = rs.randint(2, length + 1, num)
  lens[0] = length
  tokens = np.full((num, length), PAD_ID, np.int32)
  valid = np.zeros((num, length), bool)
  for i, n in enumerate(lens):
    tokens[i, length - n:] = rs.randint(1, VOCAB, n)
    valid[i, length - n:] = True
  return tokens, valid


def make_forward(model: Transformer):
  """A jitted no-cache forward: (tokens (B, T), valid (B, T)) -> logits (B, T, V)."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def fwd(params, tokens, valid):
    return nnx.merge(graphdef, params)(tokens, valid)[0]

  return lambda tokens, valid: np.asarray(
      fwd(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid, bool)))


@pytest.fixture(autouse=True)
def _unmap_compiled_code():
  """One pytest worker runs half the suite in one process, and XLA:CPU maps every
  compiled program into memory regions of its own: a worker reached 41% of
  vm.max_map_count after three test files, and one past the limit segfaults
  (ttc_jax.host.free_compiled_code). Between tests, drop JAX's compiled programs once
  past half the limit (they come back from the persistent compilation cache)."""
  host.free_compiled_code(threshold=0.5)
  yield


def continuation_inputs(prompts, valid, tokens, lengths):
  """(prompt ++ generated) with its valid mask, for a no-cache reference pass."""
  tokens = np.asarray(tokens)
  lengths = np.asarray(lengths)
  gen_valid = np.arange(tokens.shape[1])[None] < lengths[:, None]
  return (np.concatenate([prompts, tokens], 1).astype(np.int32),
          np.concatenate([valid, gen_valid], 1))


@pytest.fixture(scope="session")
def policy_model():
  return Transformer(policy_config(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="session")
def full_logits(policy_model):
  return make_forward(policy_model)


@pytest.fixture(scope="session")
def prompts():
  return make_prompts(1)


@pytest.fixture(scope="session")
def special_ids(policy_model, full_logits, prompts):
  """Stop tokens the model actually emits, picked from its own behaviour.

  step_id: the token found in the most greedy continuations (so greedy runs
  with stop_at_step do stop mid-way); eos_id: the most probable other token on
  average (so temperature-1 runs stop at EOS in some rows but not all).
  """
  tokens, valid = prompts
  n = NEW_TOKENS
  seq = np.concatenate([tokens, np.full((len(tokens), n), PAD_ID, np.int32)], 1)
  val = np.concatenate([valid, np.ones((len(tokens), n), bool)], 1)
  mean_probs = np.zeros(VOCAB)
  for t in range(n):  # Greedy by no-cache forwards (causal: later slots unread).
    logits = full_logits(seq, val)[:, PROMPT_LEN + t - 1]
    mean_probs += np.asarray(jax.nn.softmax(logits)).mean(0)
    seq[:, PROMPT_LEN + t] = logits.argmax(-1)
  greedy = seq[:, PROMPT_LEN + 1:]
  rows_with = np.array([(greedy == v).any(1).sum() for v in range(VOCAB)])
  rows_with[PAD_ID] = -1
  step_id = int(rows_with.argmax())
  mean_probs[[PAD_ID, step_id]] = -1
  eos_id = int(mean_probs.argmax())
  return SpecialIds(pad_id=PAD_ID, eos_ids=(eos_id,), step_ids=(step_id,))


@pytest.fixture(scope="session")
def core1(policy_model, special_ids):
  """The policy SamplingCore on its default 1-device mesh."""
  core = SamplingCore(policy_model, special_ids)
  assert core.data_size == 1
  return core


@pytest.fixture(scope="session")
def run(prompts):
  """run(core, sp, keys=None, rows=None) -> SampleOutput for the standard prompts
  (or the subset ``rows``), prefilled to CACHE_SIZE; keys default to seed 0."""

  def _run(core, sp, keys=None, rows=None, tokens=None, valid=None):
    if tokens is None:
      tokens, valid = prompts
      if rows is not None:
        tokens, valid = tokens[rows], valid[rows]
    if keys is None:
      keys = row_keys(0, np.arange(len(tokens)))
    state = core.prefill(tokens, valid, cache_size=CACHE_SIZE)
    return core.sample(state, keys, sp)

  return _run


def as_np(out):
  """The host arrays of a SampleOutput: (tokens, logprobs, lengths, stopped)."""
  return tuple(np.asarray(x) for x in (out.tokens, out.logprobs, out.lengths, out.stopped))

