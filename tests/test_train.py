"""The train loop and the CLI: the loss falls, outputs land in the workdir, re-running resumes."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from conftest import SyntheticBatches

from omnirl_jax import cli
from omnirl_jax.config import Config, MeshConfig, ModelConfig, OptimConfig, TrainConfig, validate
from omnirl_jax.train import STEP_METRICS, fresh_steps, train
from omnirl_jax.typed_config import ConfigError

N_STATES = 12
ROOT = Path(__file__).parent.parent


def tiny_config(n_layers=2, **train_overrides) -> Config:
    cfg = Config(
        model=ModelConfig(d_model=32, n_layers=n_layers, n_heads=4, chunk_size=16, remat=False),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(**{"batch_size": 8, "segment_len": 32, "steps": 40, "log_every": 10, **train_overrides}),
        mesh=MeshConfig(data=1, model=1),
    )
    cfg.data.generator.n_states = N_STATES
    cfg.checkpoint.every = 20
    return cfg


def test_loss_falls_and_outputs_land_in_workdir(tmp_path):
    history = train(tiny_config(), tmp_path, SyntheticBatches(batch_size=8, segment_len=32, seq_len=128, n_states=N_STATES),
                    devices=jax.devices()[:1], progress=False)
    losses = [row["loss"] for row in history]
    assert [row["step"] for row in history] == [10, 20, 30, 40]
    assert losses[-1] < 0.8 * losses[0], losses
    assert history[-1]["policy_accuracy"] > 0.5
    assert history[-1]["tokens_per_s"] > 0 and history[-1]["lr"] > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "40"]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("step,")
    assert any((tmp_path / "tensorboard").iterdir()) and (tmp_path / "config.yaml").exists()


def test_behaviour_term_is_logged_and_may_select_the_best_checkpoint(tmp_path):
    cfg = tiny_config(steps=20)
    cfg.checkpoint.best_metric = "behaviour_loss"
    batches = lambda: SyntheticBatches(batch_size=8, segment_len=32, seq_len=128, n_states=N_STATES)
    with pytest.raises(ConfigError, match="behaviour_loss"):  # no such metric while the term is off
        train(cfg, tmp_path / "off", batches(), devices=jax.devices()[:1], progress=False)
    cfg.loss.behaviour = 0.5
    history = train(cfg, tmp_path / "on", batches(), devices=jax.devices()[:1], progress=False)
    assert all(row["behaviour_loss"] > 0 for row in history)


def test_gradient_accumulation_consumes_segments_per_optimiser_step(tmp_path):
    cfg = tiny_config(n_layers=1, steps=3, log_every=1)
    cfg.optim.accumulate = 2
    batches = SyntheticBatches(batch_size=8, segment_len=32, seq_len=128, n_states=N_STATES)
    history = train(cfg, tmp_path, batches, devices=jax.devices()[:1], progress=False)
    assert [row["step"] for row in history] == [1, 2, 3] and batches.index == 6


def test_fresh_steps_yields_each_batch_with_its_metrics():
    cfg = tiny_config(n_layers=1)

    def run():
        batches = SyntheticBatches(batch_size=8, segment_len=32, seq_len=128, n_states=N_STATES)
        return list(fresh_steps(cfg, (next(batches) for _ in range(12))))

    first, again = run(), run()
    assert len(first) == 12 and set(STEP_METRICS) <= set(first[0][1])
    assert [m for _, m in first] == [m for _, m in again]  # a fresh model from train.seed each time
    assert first[-1][1]["loss"] < first[0][1]["loss"]
    assert all(isinstance(v, float) for v in first[0][1].values())


def test_plan_steps_train_on_the_plan_then_on_the_label():
    """``loss.plan_steps``: the first steps are those of a run whose label is the plan, the rest not."""
    cfg = tiny_config(n_layers=1)
    cfg.data.generator.plan_label, cfg.loss.plan_steps = True, 3

    def metrics(config, relabel):
        batches = SyntheticBatches(batch_size=8, segment_len=32, seq_len=128, n_states=N_STATES)
        feed = (dict(b, label=b["plan"]) if relabel else b for b in (next(batches) for _ in range(5)))
        return [m for _, m in fresh_steps(config, feed)]

    curriculum, on_plan = metrics(cfg, False), metrics(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, plan_steps=0)), True)
    assert [m["policy_loss"] for m in curriculum[:3]] == pytest.approx([m["policy_loss"] for m in on_plan[:3]], rel=1e-5)
    assert abs(curriculum[3]["policy_loss"] - on_plan[3]["policy_loss"]) > 0.01
    cfg.data.generator.plan_label = False
    with pytest.raises(ConfigError, match="loss.plan_steps"):
        validate(cfg)


CLI_TINY = ["model.d_model=32", "model.n_heads=4", "data.generator.n_states=12", "data.generator.seq_len=64", "data.workers=0",
            "train.segment_len=16", "train.batch_size=4", "checkpoint.every=2", "train.log_every=1"]
"""Overrides that shrink configs/cpu.yaml to seconds (the real data loader, generating in-process)."""


def csv_steps(workdir: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (workdir / "metrics.csv").read_text().splitlines()[1:]]


def test_cli_trains_and_resumes(tmp_path):
    argv = ["--config", str(ROOT / "configs/cpu.yaml"), "--workdir", str(tmp_path), "--set", *CLI_TINY, "train.steps=3"]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]
    # Same workdir: resumes from step 3, already the last (resuming mid-run: test_checkpoint and the slow test).
    assert cli.main(argv) == 0
    assert csv_steps(tmp_path) == [1, 2, 3]


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    argv = ["--config", str(ROOT / "configs/cpu.yaml"), "--workdir", str(tmp_path), "--set", "model.layers=3"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'model.layers'" in err


@pytest.mark.slow
def test_cli_resumes_after_sigkill(tmp_path):
    argv = [sys.executable, "-m", "omnirl_jax.cli", "--config", str(ROOT / "configs/cpu.yaml"), "--workdir", str(tmp_path),
            "--set", *CLI_TINY]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(argv + ["train.steps=400"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "checkpoints"
    while not (ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 10 for p in ckpts.iterdir())):
        assert proc.poll() is None, "training ended early"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    result = subprocess.run(argv + [f"train.steps={saved + 4}"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert csv_steps(tmp_path) == list(range(1, saved + 5))
