"""Evaluation during training (config section ``eval``): figures in metrics.csv, TensorBoard and a
PNG per evaluation, the training itself unchanged."""

import csv

import jax
import pytest
from conftest import SyntheticBatches

from omnirl_jax.config import Config, EvalConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from omnirl_jax.train import STEP_METRICS, train
from omnirl_jax.typed_config import ConfigError


def bandit_config(**eval_fields) -> Config:
    """A tiny 5-armed-bandit model (the bandit-5 suite's vocabulary)."""
    cfg = Config(
        model=ModelConfig(d_model=16, n_layers=1, n_heads=2, chunk_size=8, remat=False),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        train=TrainConfig(batch_size=4, segment_len=16, steps=4, log_every=2),
        mesh=MeshConfig(data=1, model=1),
        eval=EvalConfig(**eval_fields),
    )
    cfg.data.generator.n_states, cfg.data.generator.seq_len = 3, 64  # the synthetic data needs 3 observation ids; bandits use 1
    cfg.checkpoint.every = 2
    return cfg


def batches():
    return SyntheticBatches(batch_size=4, segment_len=16, seq_len=64, n_states=3)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluation_logs_figures_and_leaves_training_unchanged(tmp_path):
    lines = []
    on = train(bandit_config(every=3, tasks=4), tmp_path / "on", batches(), devices=jax.devices()[:1],
               progress=False, log=lines.append)
    off = train(bandit_config(), tmp_path / "off", batches(), devices=jax.devices()[:1], progress=False, log=lambda _: None)

    # Evaluated at step 3 (every=3, a step that logs nothing else) and at the last step.
    assert [row["step"] for row in on] == [2, 3, 4] and [row["step"] for row in off] == [2, 4]
    rows_on, rows_off = read_rows(tmp_path / "on" / "metrics.csv"), read_rows(tmp_path / "off" / "metrics.csv")
    train_rows = [row for row in rows_on if row["loss"]]
    assert [row["step"] for row in train_rows] == [row["step"] for row in rows_off]
    for a, b in zip(train_rows, rows_off):
        for name in STEP_METRICS + ("lr",):
            assert a[name] == b[name], name
    for step in ("3", "4"):
        row = next(r for r in rows_on if r["step"] == step)
        assert float(row["eval/epsilon_greedy"]) > 0.3  # the baseline learns; scores are normalised
        assert -1.0 < float(row["eval/score"]) < 1.5 and float(row["eval/ci95"]) > 0
        assert (tmp_path / "on" / "eval" / f"step_{step}" / "bandit-5_online.png").is_file()
    assert rows_on[0]["eval/score"] == ""  # step 2: no evaluation
    evals = [line for line in lines if line.startswith("eval at step")]
    assert lines[-1] == evals[-1]  # the run ends with the last evaluation
    assert len(evals) == 2 and "unseen bandit-5 tasks" in evals[-1] and "epsilon_greedy" in evals[-1]
    assert {"eval/score", "eval/first", "eval/last", "eval/epsilon_greedy", "train/loss"} <= scalar_tags(tmp_path / "on" / "tensorboard")


def scalar_tags(logdir) -> set[str]:
    """The scalar tags of the TensorBoard event files under ``logdir`` (TFRecord framing: length,
    its CRC, the Event message, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    tags = set()
    for path in logdir.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            length = int.from_bytes(data[pos:pos + 8], "little")
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            tags |= {value.tag for value in event.summary.value}
            pos += 12 + length + 4
    return tags


@pytest.mark.parametrize("fields, match", [
    ({"every": 2, "suite": "nope"}, "unknown suite"),
    ({"every": 2, "suite": "anymdp-8"}, "needs 8 observation ids"),
    ({"every": 2, "suite": "gym"}, "task groups"),
    ({"every": 2, "tasks": 1000}, "eval.tasks"),
])
def test_a_bad_eval_section_fails_before_the_workdir_is_touched(tmp_path, fields, match):
    with pytest.raises(ConfigError, match=match):
        train(bandit_config(**fields), tmp_path / "run", batches(), devices=jax.devices()[:1], progress=False,
              log=lambda _: None)
    assert not (tmp_path / "run" / "metrics.csv").exists() and not (tmp_path / "run" / "config_history").exists()
