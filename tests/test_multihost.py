"""omnirl-train as several processes joined by jax.distributed (issue 27), run for real on this
machine: processes on 127.0.0.1 with gloo collectives, each with its own fake CPU devices. Two
processes train as one process with as many devices, resume from their checkpoints on two or on
one process, and a kill -9 of one takes the other down."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from omnirl_jax import cli, digest
from omnirl_jax.checkpoint import CheckpointError
from omnirl_jax.config import MeshConfig
from omnirl_jax.sharding import make_mesh, process_rows
from omnirl_jax.train import _loader_position
from omnirl_jax.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=32", "model.n_heads=4", "model.n_layers=1", "data.generator.n_states=12", "data.generator.seq_len=64",
        "data.workers=0", "train.segment_len=16", "train.batch_size=4", "train.log_every=1", "checkpoint.every=2",
        "optim.schedule=constant", "optim.warmup_steps=2", "mesh.heartbeat_timeout=5"]
"""configs/cpu.yaml shrunk to seconds; a constant learning rate, so a run to step 4 equals the
first 4 steps of a run to step 6; a 5 s heartbeat timeout, so a dead process is noticed soon."""
LOSSES = ("loss", "policy_loss", "next_state_loss", "reward_loss", "policy_accuracy", "grad_norm")
RTOL = 1e-5
"""With a model axis, two processes reduce over gloo and one process in its own all-reduce, whose
order of additions may differ: float32 results may differ in the last bits. Data parallel over 2,
each reduction adds two terms, in either order the same: there the losses must be equal."""
HEARTBEAT_S = 5


def argv(workdir: Path, *more: str) -> list[str]:
    return ["--config", str(ROOT / "configs/cpu.yaml"), "--workdir", str(workdir), "--set", *TINY, *more]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir: Path, devices: int, *more: str, processes: int = 2) -> list[subprocess.Popen]:
    """``processes`` trainers on ``workdir``, each with ``devices`` fake CPU devices, their
    output in ``workdir.parent / f"{workdir.name}.{i}.log"``."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    procs = []
    for i in range(processes):
        with open(workdir.parent / f"{workdir.name}.{i}.log", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "omnirl_jax.cli", *argv(workdir, *more), "--coordinator", f"127.0.0.1:{port}",
                 "--num-processes", str(processes), "--process-id", str(i)],
                env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def finish(procs: list[subprocess.Popen], workdir: Path, timeout: float = 300) -> None:
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            proc.kill()
    logs = [(workdir.parent / f"{workdir.name}.{i}.log").read_text() for i in range(len(procs))]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(log[-3000:] for log in logs)


def metrics(workdir: Path) -> dict[str, np.ndarray]:
    lines = (workdir / "metrics.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    return {name: np.array([float(row[header.index(name)]) for row in rows]) for name in ("step", *LOSSES)}


def assert_same_metrics(got: Path, want: Path, rtol: float = 0.0) -> None:
    got, want = metrics(got), metrics(want)
    np.testing.assert_array_equal(got["step"], want["step"])
    for name in LOSSES:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=0, err_msg=name)


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume_on_two_or_one(tmp_path):
    """2 processes x 1 device (mesh.data=2) against 1 process x 2 devices: the same losses for 4
    steps; resumed from step 4 by 2 processes, and by 1, both to step 6: the same as 6 straight."""
    reference = tmp_path / "one"
    assert cli.main(argv(reference, "mesh.data=2", "train.steps=6")) == 0
    two = tmp_path / "two"
    finish(launch(two, 1, "mesh.data=2", "train.steps=4"), two)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["2", "4"]
    assert digest.has_digest(two / "checkpoints/4") and digest.check_digest(two / "checkpoints/4") is None
    shutil.copytree(two, tmp_path / "then_one")
    finish(launch(two, 1, "mesh.data=2", "train.steps=6"), two)
    assert "resuming from step 4" in (tmp_path / "two.0.log").read_text()
    assert_same_metrics(two, reference)
    assert cli.main(argv(tmp_path / "then_one", "mesh.data=2", "train.steps=6")) == 0
    assert_same_metrics(tmp_path / "then_one", reference)


@pytest.mark.slow
@pytest.mark.parametrize("devices, data, model", [(2, 2, 2), (1, 1, 2)], ids=["model-in-host", "model-across-hosts"])
def test_two_processes_with_a_model_axis_train_as_one(tmp_path, devices, data, model):
    """mesh.data x mesh.model over 2 processes against 1 process with all the devices: the model
    axis within each process's devices, and across the two processes."""
    mesh = [f"mesh.data={data}", f"mesh.model={model}", "train.steps=3"]
    assert cli.main(argv(tmp_path / "one", *mesh)) == 0
    finish(launch(tmp_path / "two", devices, *mesh), tmp_path / "two")
    assert_same_metrics(tmp_path / "two", tmp_path / "one", RTOL)


@pytest.mark.slow
def test_a_killed_process_takes_the_other_down(tmp_path):
    """kill -9 of process 1 mid-run: process 0 exits non-zero within the heartbeat timeout (plus
    10 s of slack for a loaded machine) instead of waiting in a collective for ever."""
    workdir = tmp_path / "run"
    procs = launch(workdir, 1, "mesh.data=2", "train.steps=100000", "checkpoint.every=1000")
    try:
        csv = workdir / "metrics.csv"
        while not csv.exists() or len(csv.read_text().splitlines()) < 3:  # training, two steps logged
            assert all(p.poll() is None for p in procs), (tmp_path / "run.0.log").read_text()[-3000:]
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        procs[0].wait(timeout=HEARTBEAT_S + 60)
        took = time.monotonic() - killed
    finally:
        for proc in procs:
            proc.kill()
    print(f"process 0 exited {took:.1f} s after the kill, status {procs[0].returncode}")
    assert procs[0].returncode != 0
    assert took < HEARTBEAT_S + 10, took


def test_paper_config_on_one_host_says_how_to_launch(tmp_path):
    """configs/tpu.yaml asks for a multi-host job; on a host that is not part of one it stops at
    once with one line naming both ways out."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "omnirl_jax.cli", "--config", str(ROOT / "configs/tpu.yaml"),
                             "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("omnirl-train: error: config key 'mesh.distributed': true, but this is no "
                                    "multi-process job (coordinator_address should be defined.)")
    assert "--coordinator HOST:PORT --num-processes N --process-id I" in result.stderr
    assert "--set mesh.distributed=false" in result.stderr
    assert time.monotonic() - started < 60
    assert not any(tmp_path.iterdir())  # nothing written


def test_launch_flags_set_the_mesh_keys():
    args = cli.parse_args(["--config", "c.yaml", "--coordinator", "10.0.0.1:1234", "--num-processes", "4",
                           "--process-id", "3"])
    cfg = cli.load_config(str(ROOT / "configs/cpu.yaml"))
    assert not cfg.mesh.distributed
    cli.apply_launch_flags(cfg, args)
    assert (cfg.mesh.distributed, cfg.mesh.coordinator_address, cfg.mesh.num_processes, cfg.mesh.process_id) == (
        True, "10.0.0.1:1234", 4, 3)


def test_one_process_loads_every_row():
    assert process_rows(make_mesh(MeshConfig(data=4, model=2)), 8) == slice(0, 8)
    assert process_rows(make_mesh(MeshConfig(data=1), jax.devices()[:1]), 3) == slice(0, 3)
    with pytest.raises(ConfigError, match="'train.batch_size': 6 is not divisible by the data axis"):
        process_rows(make_mesh(MeshConfig(data=4, model=2)), 6)


def test_processes_at_different_loader_positions_do_not_resume(tmp_path):
    state = {"version": 1, "batch": 8, "seed": 0}
    assert _loader_position([state, dict(state)], tmp_path) == state
    with pytest.raises(CheckpointError, match="its 2 processes saved different loader positions"):
        _loader_position([state, {**state, "batch": 9}], tmp_path)
