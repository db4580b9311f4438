"""Test setup: 8 fake CPU devices (set before anything imports JAX) and synthetic schema batches.

The synthetic batches follow omnirl_jax/data/schema.py exactly and carry learnable structure
(a fixed label rule, per-sequence deterministic transitions), so trainer tests do not depend on
the real data loader.
"""

import atexit
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny programs: a compilation cache for this session (and the
# subprocesses it starts) saves much of the XLA compile time. Removed when the session ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="omnirl-jax-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from omnirl_jax.data.schema import ROW_FIELDS, STEP_FIELDS, TAG_ID, TAGS  # noqa: E402


def synthetic_sequence(seed: int, seq_len: int, n_states: int, n_actions: int) -> dict:
    """One sequence of ``seq_len`` steps: random behaviour in a random deterministic MDP,
    episodes of 4..16 steps each closed by a terminal step with the null action."""
    rng = np.random.default_rng(seed)
    next_state = rng.integers(0, n_states, size=(n_states, n_actions))
    reward_mean = rng.normal(size=(n_states, n_actions)).astype(np.float32)
    obs = np.empty(seq_len + 1, np.int32)
    action = np.empty(seq_len, np.int32)
    reward = np.zeros(seq_len, np.float32)
    s, left = rng.integers(0, 3), rng.integers(4, 17)
    for t in range(seq_len):
        obs[t] = s
        if left == 0:  # terminal step: null action, zero reward, then a new episode
            action[t] = n_actions
            s, left = rng.integers(0, 3), rng.integers(4, 17)
        else:
            a = rng.integers(0, n_actions)
            action[t], reward[t] = a, reward_mean[s, a] + 0.1 * rng.normal()
            s, left = next_state[s, a], left - 1
    obs[seq_len] = s
    label = ((obs[:-1] * 7 + 3) % n_actions).astype(np.int32)
    label[action == n_actions] = n_actions
    plan = np.where(action == n_actions, n_actions, (obs[:-1] * 3 + 1) % n_actions).astype(np.int32)
    tag = rng.integers(0, len(TAGS), size=seq_len).astype(np.int32)
    return {
        "obs": obs[:-1],
        "action": action,
        "label": label,
        "reward": reward,
        "prompt": np.full(seq_len, TAG_ID["opt3"], np.int32),
        "tag": tag,
        "next_obs": obs[1:].copy(),
        "plan": plan,
    }


class SyntheticBatches:
    """An iterator of segment batches with the loader's state()/restore() interface."""

    def __init__(self, *, batch_size: int, segment_len: int, seq_len: int, n_states: int, n_actions: int = 5, seed: int = 0):
        assert seq_len % segment_len == 0
        self.batch_size, self.segment_len, self.seq_len = batch_size, segment_len, seq_len
        self.n_states, self.n_actions, self.seed = n_states, n_actions, seed
        self.index = 0
        self._cache: tuple[int, list[dict]] | None = None

    def state(self) -> dict:
        return {"index": self.index}

    def restore(self, state: dict) -> None:
        self.index = state["index"]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        per_seq = self.seq_len // self.segment_len
        group, offset = divmod(self.index, per_seq)
        offset *= self.segment_len
        if self._cache is None or self._cache[0] != group:
            seqs = [
                synthetic_sequence(self.seed * 1_000_003 + group * self.batch_size + r, self.seq_len, self.n_states, self.n_actions)
                for r in range(self.batch_size)
            ]
            self._cache = (group, seqs)
        seqs = self._cache[1]
        batch = {
            name: np.stack([s[name][offset : offset + self.segment_len] for s in seqs]).astype(dtype)
            for name, dtype in STEP_FIELDS.items()
        }
        batch["offset"] = np.full(self.batch_size, offset, ROW_FIELDS["offset"])
        batch["reset"] = np.full(self.batch_size, offset == 0, ROW_FIELDS["reset"])
        self.index += 1
        return batch


def random_batch(rng: np.random.Generator, *, batch_size: int, segment_len: int, n_states: int, n_actions: int = 5,
                 offset: int = 0) -> dict:
    """One batch of independent random sequences starting at ``offset`` (shape tests)."""
    seqs = [synthetic_sequence(int(rng.integers(1 << 30)), segment_len, n_states, n_actions) for _ in range(batch_size)]
    batch = {name: np.stack([s[name] for s in seqs]).astype(dtype) for name, dtype in STEP_FIELDS.items()}
    batch["offset"] = np.full(batch_size, offset, np.int64)
    batch["reset"] = np.full(batch_size, offset == 0, np.bool_)
    return batch


def tiny_checkpoint(path: Path, n_states: int = 16, n_actions: int = 5) -> Path:
    """A training workdir at ``path`` holding one freshly initialised checkpoint (step 1) of a
    tiny model, as ``omnirl-train`` writes it: what ``omnirl-eval`` and the agent load."""
    import jax
    import yaml

    from omnirl_jax import sharding
    from omnirl_jax.checkpoint import Checkpointer
    from omnirl_jax.config import CheckpointConfig, Config, DataConfig, GeneratorConfig, MeshConfig, ModelConfig, TrainConfig
    from omnirl_jax.train import Setup
    from omnirl_jax.typed_config import to_dict

    cfg = Config(model=ModelConfig(d_model=16, n_layers=1, n_heads=2, remat=False),
                 data=DataConfig(generator=GeneratorConfig(n_states=n_states, n_actions=n_actions)), mesh=MeshConfig(data=1, model=1),
                 checkpoint=CheckpointConfig(async_save=False), train=TrainConfig(batch_size=1))
    setup = Setup.create(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
    checkpointer = Checkpointer(path / "checkpoints", cfg.checkpoint)
    checkpointer.save(1, setup.init_state(), {"index": 0})
    checkpointer.close()
    (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """One ``tiny_checkpoint`` shared by every test that only reads it."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-run"))


def processes_with(token: str) -> list[int]:
    """Live processes whose environment holds ``token`` (a killed parent's workers inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and token.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def kill_and_reap(proc, token: str) -> list[int]:
    """SIGKILLs ``proc`` (a ``subprocess.Popen``) and returns the processes carrying ``token`` still alive 10 s later
    (its orphaned workers, if they do not notice); kills those too, so no test leaves any."""
    proc.kill()  # SIGKILL; a no-op if it already ended
    proc.wait()
    deadline = time.monotonic() + 10
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = processes_with(token)
    for pid in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return survivors
