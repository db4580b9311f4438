"""omnirl-generate: config errors, byte-identical shards, resume after SIGKILL, --verify."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import kill_and_reap

from omnirl_jax.data import shards
from omnirl_jax.data.cli import main
from omnirl_jax.data.generate import GeneratorConfig, SequenceGenerator

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--n-states", "16", "--seq-len", "2000", "--num-sequences", "5", "--num-shards", "3", "--seed", "3"]


@pytest.fixture(scope="module", autouse=True)
def compiled_generator():
    """Compile (or load) the generator here once, so spawned workers load numba's disk cache
    instead of each compiling it (minutes on 2 cores when the cache is cold)."""
    SequenceGenerator(GeneratorConfig(n_states=16, seq_len=8), 0, [0]).run(8)


def hashes(out: Path) -> dict:
    return {k: v["sha256"] for k, v in shards.load_manifest(out)["shards"].items()}


@pytest.mark.parametrize(
    "extra, yaml_text, message",
    [
        (["--n-states", "4"], None, "GeneratorConfig.n_states"),
        (["--seq-len", "0"], None, "GeneratorConfig.seq_len"),
        (["--num-shards", "3", "--shard", "3"], None, "--shard 3 out of range [0, 3)"),
        (["--workers", "0"], None, "--workers must be >= 1"),
        ([], "policy_weights: {opt3: 1.0, telepathy: 1.0}\n", "unknown policy 'telepathy'"),
        ([], "label_policy: opt9\n", "GeneratorConfig.label_policy"),
        ([], "n_sates: 32\n", "unknown key 'n_sates'"),
        ([], "n_states: [oops\n", "is not valid YAML"),
    ],
)
def test_bad_config_is_one_line_exit_2_before_any_work(tmp_path, capsys, extra, yaml_text, message):
    args = ["--out", str(tmp_path / "out"), *extra]
    if yaml_text is not None:
        (tmp_path / "gen.yaml").write_text(yaml_text)
        args += ["--config", str(tmp_path / "gen.yaml")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("omnirl-generate: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_existing_directory_of_another_data_set_is_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path), *SMALL, "--workers", "1"]) == 0
    assert main(["--out", str(tmp_path), *SMALL, "--workers", "1", "--n-states", "32"]) == 2
    assert "different data set" in capsys.readouterr().err


def test_same_seed_and_shard_give_identical_bytes(tmp_path):
    """Whole set with 2 worker processes vs. one shard alone, one process: same bytes."""
    assert main(["--out", str(tmp_path / "a"), *SMALL, "--workers", "2"]) == 0
    assert main(["--out", str(tmp_path / "b"), *SMALL, "--workers", "1", "--shard", "1"]) == 0
    name = shards.shard_name(1)
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert list(hashes(tmp_path / "b")) == ["1"]
    assert hashes(tmp_path / "a")["1"] == hashes(tmp_path / "b")["1"]
    assert main(["--out", str(tmp_path / "c"), *SMALL[:-1], "4", "--workers", "1", "--shard", "1"]) == 0
    assert (tmp_path / "c" / name).read_bytes() != (tmp_path / "a" / name).read_bytes()  # seed matters


def test_resume_redoes_corrupt_and_partial_shards_and_verify_reports(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["--out", str(out), *SMALL, "--workers", "1"]) == 0
    good = hashes(out)
    assert main(["--out", str(out), "--verify"]) == 0
    target = out / shards.shard_name(2)
    target.write_bytes(target.read_bytes()[:-1] + b"\x01")
    (out / (shards.shard_name(0) + ".partial")).write_bytes(b"junk from a killed run")
    capsys.readouterr()
    assert main(["--out", str(out), "--verify"]) == 1
    assert "shard 2: BAD (sha256 mismatch)" in capsys.readouterr().out
    assert main(["--out", str(out), *SMALL, "--workers", "1"]) == 0
    assert "1 written, 2 already valid" in capsys.readouterr().out
    assert hashes(out) == good and not list(out.glob("*.partial"))
    assert main(["--out", str(out), "--verify"]) == 0
    # killed between the rename and the manifest update: the complete file is recorded, not redone
    manifest = json.loads((out / "manifest.json").read_text())
    records = dict(manifest["shards"])
    del manifest["shards"]["0"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--out", str(out), *SMALL, "--workers", "1"]) == 0
    assert "0 written, 3 already valid" in capsys.readouterr().out
    assert shards.load_manifest(out)["shards"] == records


def test_sigkill_mid_run_then_rerun_completes_the_set(tmp_path):
    """Kill the CLI (2 workers) once its first shard is recorded; its workers exit; a re-run
    finishes the set with every checksum valid, each sequence id exactly once, and the bytes of
    an uninterrupted run."""
    n = 16
    args = ["--n-states", "16", "--seq-len", "500000", "--num-sequences", str(n), "--num-shards", str(n), "--seed", "5"]
    out = tmp_path / "killed"
    token = f"OMNIRL_KILL_TEST={os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-m", "omnirl_jax.data.cli", "--out", str(out), *args, "--workers", "2"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, token.split("=")[0]: token.split("=")[1]})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads((out / "manifest.json").read_text())["shards"]:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.01)
        assert proc.poll() is None, "finished before it could be killed: make the run longer"
        assert not kill_and_reap(proc, token), "workers outlived their killed parent"
    finally:
        kill_and_reap(proc, token)
    done_at_kill = len(shards.load_manifest(out)["shards"])
    assert 1 <= done_at_kill < n
    assert not shards.verify(out).ok
    assert main(["--out", str(out), *args, "--workers", "1"]) == 0
    report = shards.verify(out)
    assert report.ok and report.valid == list(range(n))
    ids = np.concatenate([shards.ShardFile(out / shards.shard_name(i))["sequence_id"] for i in range(n)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    assert not list(out.glob("*.partial"))
    clean = tmp_path / "clean"
    assert main(["--out", str(clean), *args, "--workers", "1"]) == 0
    assert hashes(out) == hashes(clean)
