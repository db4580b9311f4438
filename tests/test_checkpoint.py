"""Checkpoints: exact resume after a crash, keep-N / best-N, clear errors that overwrite nothing."""

import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SyntheticBatches

from omnirl_jax.checkpoint import Checkpointer, CheckpointError
from omnirl_jax.config import CheckpointConfig, Config, MeshConfig, ModelConfig, TrainConfig
from omnirl_jax.train import train
from omnirl_jax.workdir import LOCK_FILE

N_STATES = 12
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def tiny_config(**checkpoint) -> Config:
    cfg = Config(
        model=ModelConfig(d_model=32, n_layers=2, n_heads=4, chunk_size=16),
        train=TrainConfig(batch_size=4, segment_len=12, steps=6, log_every=1),
        mesh=MeshConfig(data=1, model=1),
        checkpoint=CheckpointConfig(every=3, keep=2, **checkpoint),
    )
    cfg.data.generator.n_states = N_STATES
    cfg.optim.warmup_steps = 2
    return cfg


def batches():
    # 4 segments per sequence: the crash and the checkpoint at step 3 fall mid-sequence,
    # so the carried recurrent state must be restored too.
    return SyntheticBatches(batch_size=4, segment_len=12, seq_len=48, n_states=N_STATES)


class CrashAfter:
    """Yields ``n`` batches, then fails like a killed process would."""

    def __init__(self, source, n):
        self.source, self.n = source, n

    def __iter__(self):
        return self

    def __next__(self):
        if self.n == 0:
            raise RuntimeError("simulated crash")
        self.n -= 1
        return next(self.source)

    def state(self):
        return self.source.state()

    def restore(self, state):
        self.source.restore(state)


def read_params(workdir: Path, step: int):
    return Checkpointer(workdir / "checkpoints", CheckpointConfig()).manager.restore(step)


def tree_bytes(path: Path) -> dict:
    """Every file below ``path`` but the lock (which holds the pid of its last owner)."""
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cfg = tiny_config()
    devices = jax.devices()[:1]
    straight = tmp_path_factory.mktemp("straight")
    history = train(cfg, straight, batches(), devices=devices, progress=False, log=lambda _: None)
    resumed = tmp_path_factory.mktemp("resumed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, resumed, CrashAfter(batches(), 4), devices=devices, progress=False, log=lambda _: None)
    resumed_history = train(cfg, resumed, batches(), devices=devices, progress=False, log=lambda _: None)
    return cfg, straight, history, resumed, resumed_history


def test_train_says_whether_it_starts_fresh_or_resumes(runs, tmp_path):
    """A user sees, in one line each, a fresh start or a resume with its step, and a finished run
    that has nothing left to do."""
    _, straight, *_ = runs
    cfg, lines, devices = tiny_config(), [], jax.devices()[:1]
    cfg.train.steps = 3
    train(cfg, tmp_path, batches(), devices=devices, progress=False, log=lines.append)
    assert lines[0].startswith("starting fresh") and not any("resum" in line for line in lines)
    assert any("compiles" in line for line in lines) and lines[-1].startswith("done: step 3,")
    lines.clear()
    cfg.train.steps = 6
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path, CrashAfter(batches(), 1), devices=devices, progress=False, log=lines.append)
    assert lines[0] == f"resuming from step 3 of {tmp_path / 'checkpoints'}"
    lines.clear()
    assert train(cfg, straight, batches(), devices=devices, progress=False, log=lines.append) == []
    assert lines[0].startswith("resuming from step 6") and lines[-1].startswith("nothing to train")


def test_resume_after_crash_equals_uninterrupted_run(runs):
    _, straight, history, resumed, resumed_history = runs
    assert [row["step"] for row in resumed_history] == [4, 5, 6]
    for row in resumed_history:
        assert row["loss"] == history[row["step"] - 1]["loss"]
    a, b = read_params(straight, 6), read_params(resumed, 6)
    for x, y in zip(jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"])):
        np.testing.assert_array_equal(x, y)
    assert a["loader"] == b["loader"] == {"processes": [{"index": 6}], "log_window": []}
    # The CSV reads as one run: the crashed run's rows after the checkpoint are replaced.
    steps = [int(line.split(",")[0]) for line in (resumed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_checkpoint_holds_train_state_and_loader_position(runs):
    _, straight, _, _, _ = runs
    assert sorted(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    restored = read_params(straight, 3)
    state = restored["state"]
    assert set(state) == {"step", "params", "opt_state", "carry"}
    assert int(state["step"]) == 3 and restored["loader"] == {"processes": [{"index": 3}], "log_window": []}
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(state["carry"]))


def test_no_intact_checkpoint_gives_one_line_error_and_is_left_alone(runs, tmp_path):
    cfg, straight, _, _, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    for f in (workdir / "checkpoints").rglob("state/*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    before = tree_bytes(workdir)
    with pytest.raises(CheckpointError) as err:
        train(cfg, workdir, batches(), devices=jax.devices()[:1], progress=False, log=lambda _: None)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"no intact checkpoint in {workdir / 'checkpoints'} (newest: ")
    assert "checkpoints/6/state/" in message and "nothing was changed" in message
    assert tree_bytes(workdir) == before


def test_checkpoint_of_another_config_names_the_array_that_differs(runs, tmp_path):
    _, straight, _, _, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    cfg = tiny_config()
    cfg.model.d_model = 16
    before = tree_bytes(workdir)
    with pytest.raises(CheckpointError) as err:
        train(cfg, workdir, batches(), devices=jax.devices()[:1], progress=False)
    message = str(err.value)
    assert "\n" not in message and "checkpoints/6 does not match the config: " in message
    assert "params/action_embed/embedding/value is (6, 32) float32 in the checkpoint, the config needs (6, 16) float32 (and " in message
    assert tree_bytes(workdir) == before  # config.yaml and metrics.csv too: the run's record stays true


def test_flipped_byte_is_never_trained_on(runs, tmp_path):
    """One byte of the newest step flipped: a restore skips the step, naming the file, and the
    trainer sets it aside and trains the lost steps again, ending bit for bit as the straight run;
    a restore of exactly that step stops; evaluation uses the newest intact step."""
    from fault_matrix import flip_byte, metric_rows

    from omnirl_jax.eval.evaluate import load_model

    cfg, straight, _, _, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    bad = flip_byte(workdir / "checkpoints" / "6")
    flipped = bad.read_bytes()
    lines = []
    assert load_model(workdir, warn=lines.append).step == 3
    assert lines == [f"warning: checkpoint {workdir / 'checkpoints' / '6'} is corrupt: {bad} does not match its "
                     "CRC-32 digest; skipped, using step 3"]
    explicit = tiny_config(restore_step=6)
    with pytest.raises(CheckpointError, match=r"checkpoints/6 is corrupt: .* set checkpoint.restore_step to an earlier step"):
        train(explicit, workdir, batches(), devices=jax.devices()[:1], progress=False, log=lambda _: None)
    lines.clear()
    train(cfg, workdir, batches(), devices=jax.devices()[:1], progress=False, log=lines.append)
    assert lines[0] == (f"warning: checkpoint {workdir / 'checkpoints' / '6'} is corrupt: {bad} does not match its "
                        "CRC-32 digest; moved to 6.corrupt, using step 3")
    assert lines[1].startswith("resuming from step 3")
    aside = workdir / "checkpoints" / "6.corrupt" / bad.relative_to(workdir / "checkpoints" / "6")
    assert aside.read_bytes() == flipped  # kept for inspection, as found
    a, b = read_params(straight, 6), read_params(workdir, 6)
    for x, y in zip(jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"])):
        np.testing.assert_array_equal(x, y)
    assert metric_rows(workdir) == metric_rows(straight)


def test_missing_checkpoint_step_gives_one_line_error(runs):
    _, straight, _, _, _ = runs
    cfg = tiny_config(restore_step=5)
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 5 .*available: \[3, 6\]"):
        train(cfg, straight, batches(), devices=jax.devices()[:1], progress=False)


def test_keep_newest_and_best_by_metric(tmp_path):
    state = {"w": jnp.arange(3.0)}
    newest = Checkpointer(tmp_path / "newest", CheckpointConfig(keep=2, async_save=False))
    best = Checkpointer(tmp_path / "best", CheckpointConfig(keep=1, best_metric="loss", async_save=False))
    for step, loss in [(1, 0.5), (2, 0.1), (3, 0.9), (4, 0.7)]:
        newest.save(step, state, {"i": step}, {"loss": loss})
        best.save(step, state, {"i": step}, {"loss": loss})
    newest.close(), best.close()
    assert newest.all_steps() == [3, 4]
    assert best.all_steps() == [2, 4]  # the best, and the newest (needed to resume)


def test_checkpoint_of_the_former_layout_restores(tmp_path):
    """Checkpoints saved before issue 29 hold the carry as a plain tuple and dropout's key ``rng``:
    they restore into today's state (the ``Carry`` flattens to the same positions), ``rng`` dropped."""
    import flax
    from omnirl_jax import sharding
    from omnirl_jax.train import Setup

    class FormerState(flax.struct.PyTreeNode):
        step: jax.Array
        params: object
        opt_state: object
        rng: jax.Array
        carry: tuple

    cfg = tiny_config(async_save=False)
    cfg.model.reward_zscore, cfg.model.token_conv = True, 4  # every optional part of the carry
    setup = Setup.create(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
    leaves = iter(range(1, 10**6))  # distinct values, so a part restored into another's place shows
    state = jax.tree.map(lambda x: jnp.full(x.shape, next(leaves), x.dtype), setup.abstract_state)
    former = FormerState(state.step, state.params, state.opt_state, jnp.ones(2, jnp.uint32), tuple(jax.tree.leaves(state.carry)))
    checkpointer = Checkpointer(tmp_path, cfg.checkpoint)
    checkpointer.save(3, former, {"index": 3})
    restored, loader, step = checkpointer.restore(setup.abstract_state)
    checkpointer.close()
    assert step == 3 and loader == {"index": 3} and type(restored) is type(state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(x, y)
