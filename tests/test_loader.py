"""make_loader: schema batches, in-order segments, shuffling, exact resume, worker-independence."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import kill_and_reap, processes_with

from omnirl_jax.config import DataConfig
from omnirl_jax.data import shards
from omnirl_jax.data.cli import main as generate_main
from omnirl_jax.data.generate import GeneratorConfig, SequenceGenerator
from omnirl_jax.data.loader import make_loader
from omnirl_jax.data.schema import ROW_FIELDS, STEP_FIELDS
from omnirl_jax.typed_config import ConfigError

SEQ_LEN, SEGMENT, BATCH = 1200, 300, 3
PER_SEQ = SEQ_LEN // SEGMENT


@pytest.fixture(scope="module", autouse=True)
def compiled_generator():
    """Compile (or load) the generator here once, so spawned workers load numba's disk cache
    instead of each compiling it (minutes on 2 cores when the cache is cold)."""
    SequenceGenerator(GeneratorConfig(n_states=16, seq_len=8), 0, [0]).run(8)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    assert generate_main(["--out", str(out), "--n-states", "16", "--seq-len", str(SEQ_LEN), "--num-sequences", "7",
                          "--num-shards", "3", "--seed", "2", "--workers", "1"]) == 0
    return out


def shard_cfg(path, **kw):
    return DataConfig(source="shards", path=str(path), generator=GeneratorConfig(n_states=16, seq_len=SEQ_LEN), **kw)


def gen_cfg(workers, **kw):
    return DataConfig(source="generate", workers=workers, generator=GeneratorConfig(
        **{"n_states": 16, "seq_len": SEQ_LEN, "policy_weights": {"qlearning": 1.0, "opt3": 1.0}, **kw}))


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def check_schema(batch):
    assert set(batch) == set(STEP_FIELDS) | set(ROW_FIELDS)
    for name, dtype in STEP_FIELDS.items():
        assert batch[name].dtype == dtype and batch[name].shape == (BATCH, SEGMENT), name
    for name, dtype in ROW_FIELDS.items():
        assert batch[name].dtype == dtype and batch[name].shape == (BATCH,), name


def stitch(batches, row):
    """A row's whole sequence from its PER_SEQ consecutive segments."""
    return {k: np.concatenate([b[k][row] for b in batches]) for k in STEP_FIELDS}


def all_sequences(path):
    manifest = shards.load_manifest(path)
    out = {}
    for i in range(manifest["num_shards"]):
        with shards.ShardFile(path / shards.shard_name(i)) as f:
            for r, sid in enumerate(f["sequence_id"]):
                out[int(sid)] = {k: np.array(f[k][r]) for k in ("obs", "action", "label", "reward", "prompt", "tag")}
                out[int(sid)]["last_obs"] = int(f["last_obs"][r])
    return out


def test_shard_batches_stream_whole_sequences_in_order_and_shuffle_per_epoch(shard_dir):
    loader = make_loader(shard_cfg(shard_dir), batch_size=BATCH, segment_len=SEGMENT, seed=1)
    sequences = all_sequences(shard_dir)
    by_obs = {seq["obs"].tobytes(): sid for sid, seq in sequences.items()}
    seen = []
    for group in range(5):  # 15 row-sequences: two epochs of 7 and one more
        batches = take(loader, PER_SEQ)
        for p, batch in enumerate(batches):
            check_schema(batch)
            assert (batch["offset"] == p * SEGMENT).all() and (batch["reset"] == (p == 0)).all()
        for row in range(BATCH):
            got = stitch(batches, row)
            sid = by_obs[got["obs"].astype(np.uint16).tobytes()]
            seen.append(sid)
            seq = sequences[sid]
            for k in ("obs", "action", "label", "reward", "prompt", "tag"):
                np.testing.assert_array_equal(got[k], seq[k], err_msg=k)
            np.testing.assert_array_equal(got["next_obs"], np.append(seq["obs"][1:], seq["last_obs"]))
    assert sorted(seen[:7]) == sorted(seen[7:14]) == list(range(7))
    assert seen[:7] != seen[7:14]  # a new permutation each epoch
    other = make_loader(shard_cfg(shard_dir), batch_size=BATCH, segment_len=SEGMENT, seed=2)
    assert next(other)["obs"].tobytes() != next(make_loader(shard_cfg(shard_dir), batch_size=BATCH,
                                                             segment_len=SEGMENT, seed=1))["obs"].tobytes()


def test_shard_loader_restores_exactly_and_never_reuses_buffers(shard_dir):
    loader = make_loader(shard_cfg(shard_dir), batch_size=BATCH, segment_len=SEGMENT, seed=4)
    first = take(loader, 6)
    state = json.loads(json.dumps(loader.state()))
    rest = take(loader, 5)
    resumed = make_loader(shard_cfg(shard_dir), batch_size=BATCH, segment_len=SEGMENT, seed=4)
    resumed.restore(state)
    assert_batches_equal(take(resumed, 5), rest)
    batches = first + rest
    for a in range(len(batches)):
        for b in range(a + 1, len(batches)):
            assert not any(np.shares_memory(batches[a][k], batches[b][k]) for k in batches[a])
    with pytest.raises(ConfigError, match="batch_size"):
        make_loader(shard_cfg(shard_dir), batch_size=BATCH + 1, segment_len=SEGMENT, seed=4).restore(state)


def test_shard_loader_config_errors(shard_dir, tmp_path):
    with pytest.raises(ConfigError, match="data.generator.n_states"):
        make_loader(DataConfig(source="shards", path=str(shard_dir), generator=GeneratorConfig(n_states=32, seq_len=SEQ_LEN)),
                    batch_size=BATCH, segment_len=SEGMENT, seed=0)
    with pytest.raises(ConfigError, match="not a multiple of train.segment_len=7"):
        make_loader(shard_cfg(shard_dir), batch_size=BATCH, segment_len=7, seed=0)
    with pytest.raises(ConfigError, match="no manifest.json"):
        make_loader(shard_cfg(tmp_path), batch_size=BATCH, segment_len=SEGMENT, seed=0)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    del manifest["shards"]["1"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="incomplete"):
        make_loader(shard_cfg(tmp_path), batch_size=BATCH, segment_len=SEGMENT, seed=0)


def test_generated_batches_match_the_generator_and_restore_mid_sequence():
    loader = make_loader(gen_cfg(0), batch_size=BATCH, segment_len=SEGMENT, seed=9)
    batches = take(loader, 2 * PER_SEQ + 2)
    for b in batches:
        check_schema(b)
    config = GeneratorConfig(n_states=16, seq_len=SEQ_LEN, policy_weights={"qlearning": 1.0, "opt3": 1.0})
    for group in range(2):
        gen = SequenceGenerator(config, 9, range(group * BATCH, (group + 1) * BATCH))
        expected = gen.run(SEQ_LEN)
        for row in range(BATCH):
            got = stitch(batches[group * PER_SEQ:(group + 1) * PER_SEQ], row)
            for k in ("obs", "action", "label", "reward", "prompt", "tag"):
                np.testing.assert_array_equal(got[k], expected[k][row], err_msg=k)
            np.testing.assert_array_equal(got["next_obs"], np.append(expected["obs"][row, 1:], gen.last_obs[row]))
    resumed = make_loader(gen_cfg(0), batch_size=BATCH, segment_len=SEGMENT, seed=9)
    resumed.restore({**loader.state(), "batch": PER_SEQ + 1})  # mid-way through group 1
    assert_batches_equal(take(resumed, PER_SEQ + 1), batches[PER_SEQ + 1:])


def test_background_workers_give_the_same_batches_as_in_process():
    ref = take(make_loader(gen_cfg(0), batch_size=BATCH, segment_len=SEGMENT, seed=5), PER_SEQ + 2)
    with make_loader(gen_cfg(2), batch_size=BATCH, segment_len=SEGMENT, seed=5) as loader:
        got = take(loader, 3)
        state = loader.state()
        loader.restore(state)  # restarts the workers at batch 3
        got += take(loader, PER_SEQ - 1)
    assert_batches_equal(got, ref)


def test_a_process_rows_are_those_rows_of_the_global_batch(shard_dir):
    """The loaders of a multi-process run (here rows 0 and 1..2 of 3, the second with two workers)
    yield the 1-process batch's rows and the same state(): the batch depends on (seed, n) only."""
    for cfg, cfg_rest in ((shard_cfg(shard_dir), shard_cfg(shard_dir)), (gen_cfg(0), gen_cfg(2))):
        full = take(make_loader(cfg, batch_size=BATCH, segment_len=SEGMENT, seed=3), PER_SEQ + 1)
        with make_loader(cfg, batch_size=BATCH, segment_len=SEGMENT, seed=3, rows=slice(0, 1)) as first, \
                make_loader(cfg_rest, batch_size=BATCH, segment_len=SEGMENT, seed=3, rows=slice(1, 3)) as rest:
            joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(take(first, PER_SEQ + 1),
                                                                                  take(rest, PER_SEQ + 1))]
            assert first.state() == rest.state()
        assert_batches_equal(joined, full)
    with pytest.raises(ConfigError, match="rows 2..4 are not a contiguous part of the 3-row batch"):
        make_loader(gen_cfg(0), batch_size=BATCH, segment_len=SEGMENT, seed=0, rows=slice(2, 4))


def test_generate_loader_config_errors():
    with pytest.raises(ConfigError, match="data.generator': GeneratorConfig.n_states"):
        make_loader(gen_cfg(0, n_states=4), batch_size=BATCH, segment_len=SEGMENT, seed=0)
    with pytest.raises(ConfigError, match="label_policy"):
        make_loader(gen_cfg(0, label_policy="exp1"), batch_size=BATCH, segment_len=SEGMENT, seed=0)
    with pytest.raises(ConfigError, match="source"):
        make_loader(DataConfig(source="ftp"), batch_size=BATCH, segment_len=SEGMENT, seed=0)


def test_workers_exit_when_the_trainer_is_killed():
    script = (
        "from omnirl_jax.config import DataConfig, GeneratorConfig\n"
        "from omnirl_jax.data.loader import make_loader\n"
        # Segments larger than a pipe buffer (64 KiB), so each worker's queue holds unflushed data.
        "loader = make_loader(DataConfig(generator=GeneratorConfig(n_states=16, seq_len=16384), workers=2), batch_size=2, segment_len=8192, seed=0)\n"
        "next(loader)\n"
        "print('ready', flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMNIRL_LOADER_KILL_TEST": token},
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(processes_with(token)) >= 3  # the trainer, its two workers (and the resource tracker)
        assert not kill_and_reap(proc, token), "data workers outlived the killed trainer"
    finally:
        kill_and_reap(proc, token)
