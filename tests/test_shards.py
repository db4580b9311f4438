"""Shard files and manifest: layout round trip, id partition, checksums, config parsing."""

import json

import numpy as np
import pytest

from omnirl_jax.data import shards
from omnirl_jax.data.generate import STEP_DTYPES, GeneratorConfig, SequenceGenerator

SEQ_LEN = 3000


def make_spec(**kw) -> shards.DatasetSpec:
    config = GeneratorConfig(n_states=16, seq_len=kw.pop("seq_len", SEQ_LEN))
    return shards.DatasetSpec(config, kw.pop("seed", 7), kw.pop("num_sequences", 5), kw.pop("num_shards", 2)).validate()


def write_shard(out, spec, index, rows_per_unit=None, chunk=1000):
    """Fill a shard the way the CLI does (in units of rows), finish it and record it."""
    shards.init_manifest(out, spec)
    partial = out / (shards.shard_name(index) + ".partial")
    shards.create_shard(partial, spec, index)
    n = len(spec.shard_ids(index))
    step = rows_per_unit or n
    episodes = sum(shards.fill_rows(partial, spec, index, range(lo, min(lo + step, n)), chunk) for lo in range(0, n, step))
    final = out / shards.shard_name(index)
    digest = shards.finish_shard(partial, final)
    shards.record_shard(out, index, shards.shard_record(spec, index, digest, episodes, final.stat().st_size))
    return final


def test_shard_ids_partition_all_sequences():
    spec = make_spec(num_sequences=11, num_shards=4)
    ids = [list(spec.shard_ids(i)) for i in range(4)]
    assert sorted(sum(ids, [])) == list(range(11))
    assert {len(x) for x in ids} <= {2, 3}
    with pytest.raises(ValueError, match="out of range"):
        spec.shard_ids(4)
    with pytest.raises(ValueError, match="num_shards=6 exceeds num_sequences=5"):
        make_spec(num_sequences=5, num_shards=6)


def test_round_trip_matches_generator_and_is_memmapped(tmp_path):
    spec = make_spec()
    path = write_shard(tmp_path, spec, 1, rows_per_unit=2, chunk=700)  # ids 2, 3, 4; units of 2 rows
    ids = list(spec.shard_ids(1))
    gen = SequenceGenerator(spec.config, spec.seed, ids)
    expected = gen.run(SEQ_LEN)
    with shards.ShardFile(path) as shard:
        assert isinstance(shard["obs"], np.memmap)
        for name, dtype in STEP_DTYPES.items():
            assert shard[name].dtype == dtype and shard[name].shape == (3, SEQ_LEN)
            np.testing.assert_array_equal(shard[name], expected[name], err_msg=name)
        np.testing.assert_array_equal(shard["sequence_id"], ids)
        np.testing.assert_array_equal(shard["last_obs"], gen.last_obs)
        for f in shard.header["fields"].values():
            assert f["offset"] % shards.ALIGN == 0
    record = shards.load_manifest(tmp_path)["shards"]["1"]
    assert record["num_sequences"] == 3 and record["num_steps"] == 3 * SEQ_LEN
    assert record["num_episodes"] == int(expected["episode_end"].sum()) > 0
    assert not list(tmp_path.glob("*.partial"))


def test_same_content_same_bytes_whatever_the_units(tmp_path):
    spec = make_spec()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_shard(tmp_path / "a", spec, 0, rows_per_unit=1, chunk=512)
    b = write_shard(tmp_path / "b", spec, 0, chunk=SEQ_LEN)
    assert a.read_bytes() == b.read_bytes()


def test_verify_detects_corruption_and_missing(tmp_path):
    spec = make_spec()
    path = write_shard(tmp_path, spec, 0)
    report = shards.verify(tmp_path)
    assert report.valid == [0] and report.missing == [1] and not report.ok
    write_shard(tmp_path, spec, 1)
    assert shards.verify(tmp_path).ok
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 5000)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    report = shards.verify(tmp_path)
    assert report.bad == {0: "sha256 mismatch"} and report.valid == [1]


def test_truncated_or_foreign_file_is_a_one_line_error(tmp_path):
    spec = make_spec()
    path = write_shard(tmp_path, spec, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(shards.ShardError, match="truncated"):
        shards.ShardFile(path)
    path.write_bytes(b"not a shard at all")
    with pytest.raises(shards.ShardError, match="bad magic"):
        shards.ShardFile(path)


def test_manifest_refuses_another_data_set(tmp_path):
    shards.init_manifest(tmp_path, make_spec(seed=1))
    shards.init_manifest(tmp_path, make_spec(seed=1))  # same data set: fine
    with pytest.raises(shards.ShardError, match="different data set"):
        shards.init_manifest(tmp_path, make_spec(seed=2))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert shards.DatasetSpec.from_manifest(manifest) == make_spec(seed=1)


def test_generator_config_from_mapping():
    cfg = shards.generator_config({"n_states": 32, "noise_range": [0.1, 0.5]})
    assert cfg.n_states == 32 and cfg.noise_range == (0.1, 0.5)
    assert shards.generator_config(shards.config_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown key 'n_sates'"):
        shards.generator_config({"n_sates": 32})
    with pytest.raises(ValueError, match="policy_weights"):
        shards.generator_config({"policy_weights": {"telepathy": 1.0}})
