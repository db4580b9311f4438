"""Faults that used to lose or corrupt a user's work (issue 24): kill -9 in a save, SIGTERM
mid-run, two trainers on one workdir, a resume the workdir rejects, a workdir that is a file.
Faults are injected as benchmarks/fault_matrix.py does, on a tiny config."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from omnirl_jax import cli, digest
from omnirl_jax.interrupt import StopRequest
from omnirl_jax.workdir import HISTORY_DIR, LOCK_FILE

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import fault_matrix  # noqa: E402

TINY = ["model.d_model=32", "model.n_heads=4", "data.generator.n_states=12", "data.generator.seq_len=64", "data.workers=0",
        "train.segment_len=16", "train.batch_size=4", "train.log_every=3", "checkpoint.every=2"]
"""configs/cpu.yaml shrunk to seconds; log windows of 3 steps, so resumes split them."""


def argv(workdir: Path, *more: str) -> list[str]:
    return fault_matrix.cli_args(workdir, [*TINY, *more])


def steps_on_disk(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def tree(workdir: Path) -> dict:
    """Every file of a workdir but its lock (which holds its last owner's pid)."""
    return {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of 6 steps (checkpoints at 2, 4, 6)."""
    workdir = tmp_path_factory.mktemp("reference")
    assert cli.main(argv(workdir, "train.steps=6")) == 0
    return workdir


# The default suite kills at one point (its budget is 15 minutes on CI); ``-m slow`` at all three.
@pytest.mark.parametrize("point", ["write", pytest.param("digest", marks=pytest.mark.slow),
                                   pytest.param("commit", marks=pytest.mark.slow)])
def test_kill_during_a_save_resumes_from_the_last_complete_step(reference, tmp_path, point, capsys):
    """SIGKILL in the second save (step 4): with its arrays written but not finalised, with its
    digest half written, and with the digest written but the step not yet renamed into place."""
    faulted = fault_matrix.run(fault_matrix.train_command(tmp_path, [*TINY, "train.steps=6"], f"kill:{point}:2"))
    assert faulted.returncode == -signal.SIGKILL, faulted.stderr[-2000:]
    assert steps_on_disk(tmp_path) == [2]  # step 4 never appears half made
    capsys.readouterr()
    assert cli.main(argv(tmp_path, "train.steps=6")) == 0
    assert f"resuming from step 2 of {tmp_path / 'checkpoints'}" in capsys.readouterr().out
    for step in steps_on_disk(tmp_path):
        assert digest.has_digest(tmp_path / "checkpoints" / str(step))
        assert digest.check_digest(tmp_path / "checkpoints" / str(step)) is None
    assert fault_matrix.same_params(reference, tmp_path, 6)
    assert fault_matrix.metric_rows(tmp_path) == fault_matrix.metric_rows(reference)


def test_sigterm_saves_the_step_in_flight_and_a_second_trainer_is_refused(tmp_path, capsys):
    """A trainer gets SIGTERM at some step N from outside: it stops with one line and exit 143
    and a checkpoint of N; resumed (to N + 2 steps: a constant learning rate makes the total
    irrelevant), it equals an uninterrupted run. While it runs, a second trainer on its workdir
    exits at once naming its pid."""
    constant = ["optim.schedule=constant", "optim.warmup_steps=2"]
    command = fault_matrix.train_command(tmp_path, [*TINY, *constant, "train.steps=500"])
    err_file = tmp_path / "stderr.txt"  # a file: a pipe nobody reads would fill with the progress bar
    with open(err_file, "w") as err_out:
        proc = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(fault_matrix.ROOT)),
                                stdout=subprocess.PIPE, stderr=err_out, text=True)
    try:
        for line in proc.stdout:  # the lock is held once it says what it trains
            if line.startswith("training steps"):
                break
        started = time.perf_counter()
        assert cli.main(argv(tmp_path, *constant, "train.steps=500")) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"in use by another trainer (pid {proc.pid} on " in err, err
        assert time.perf_counter() - started < 10
        metrics = tmp_path / "metrics.csv"
        while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:  # two rows logged
            assert proc.poll() is None, "training ended early"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = err_file.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("omnirl-train: interrupted at step "), err[-2000:]
    step = int(last.split()[4])
    assert last.endswith(f"step {step} by SIGTERM; checkpoint saved; run the same command to resume")
    assert step in steps_on_disk(tmp_path) and 6 <= step < 500

    assert cli.main(argv(tmp_path, *constant, f"train.steps={step + 2}")) == 0
    out = capsys.readouterr().out
    assert f"resuming from step {step} of" in out
    assert f"config changed since the last start: train.steps: 500 -> {step + 2}" in out
    straight = tmp_path.parent / "straight"
    assert cli.main(argv(straight, *constant, f"train.steps={step + 2}")) == 0
    assert fault_matrix.same_params(straight, tmp_path, step + 2)
    assert fault_matrix.metric_rows(tmp_path) == fault_matrix.metric_rows(straight)


def test_rejected_resume_changes_nothing_and_a_resume_keeps_every_start(reference, tmp_path, capsys):
    import shutil

    from omnirl_jax.eval.evaluate import load_model

    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = tree(workdir)
    for change, message in [("model.d_model=64", "does not match the config"), ("train.seed=5", "seed=0")]:
        assert cli.main(argv(workdir, "train.steps=6", change)) == 2
        assert message in capsys.readouterr().err
        assert tree(workdir) == before, change
    assert load_model(workdir).step == 6  # the run's config still describes its checkpoints

    assert cli.main(argv(workdir, "train.steps=8", "optim.lr=0.002")) == 0
    assert ("config changed since the last start: optim.lr: 0.001 -> 0.002, train.steps: 6 -> 8"
            in capsys.readouterr().out)
    starts = sorted((workdir / HISTORY_DIR).iterdir())
    assert [p.name for p in starts] == ["001_step0.yaml", "002_step6.yaml"]
    assert yaml.safe_load(starts[0].read_text()) == yaml.safe_load((reference / "config.yaml").read_text())
    assert yaml.safe_load(starts[1].read_text())["optim"]["lr"] == 0.002
    assert starts[1].read_text().startswith("# start 2: resumed from step 6, ")
    assert (workdir / "config.yaml").read_text() in starts[1].read_text()


def test_workdir_that_is_a_file_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(argv(tmp_path / "file")) == 2
    err = capsys.readouterr().err
    assert err == f"omnirl-train: error: --workdir {tmp_path / 'file'}: is a file, not a directory\n"


def test_first_signal_asks_to_stop_and_gives_a_second_its_default_action():
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert stop.requested() == 0
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested() == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous
