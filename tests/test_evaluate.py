"""omnirl-eval: scoring arithmetic, one-line errors for bad checkpoints, and one small end-to-end
run that writes the CSV and PNG reports."""

import csv

import numpy as np
import pytest
import yaml

from omnirl_jax.eval.baselines import normalise
from omnirl_jax.eval.cli import main
from omnirl_jax.eval.evaluate import run, window_returns


def test_window_returns_average_complete_episodes():
    reward = np.array([[1, 1, 1, 5, 0, 2, 2, 7]], np.float32)
    done = np.array([[0, 1, 0, 1, 0, 0, 0, 0]], bool)  # episodes end at steps 1 and 3; the last is cut off
    np.testing.assert_allclose(window_returns(reward, done, 2), [[2, 6, np.nan, np.nan]])
    np.testing.assert_allclose(window_returns(reward, done, 4), [[4, np.nan]])


def test_normalise_maps_random_to_zero_and_oracle_to_one():
    r_rand, r_orc = np.array([-2.0, 1.0, 3.0]), np.array([2.0, 3.0, 3.0])
    out = normalise(np.stack([r_rand, r_orc, (r_rand + r_orc) / 2], axis=1), r_rand, r_orc)
    np.testing.assert_allclose(out[:2], [[0, 1, 0.5], [0, 1, 0.5]])
    assert np.all(np.isnan(out[2]))  # no gap between oracle and random: not normalisable


@pytest.fixture
def workdir(tiny_workdir):
    """A training workdir holding one freshly initialised checkpoint of a tiny model."""
    return tiny_workdir


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("omnirl-eval: error:") and match in err, err


def test_missing_or_mismatched_checkpoint_fails_with_one_line(workdir, tmp_path, capsys):
    _one_line_error(capsys, ["--checkpoint", str(tmp_path / "nope"), "--suite", "anymdp-16"], "does not exist")
    _one_line_error(capsys, ["--checkpoint", str(tmp_path), "--suite", "anymdp-16"], "no config.yaml")
    (tmp_path / "config.yaml").write_text((workdir / "config.yaml").read_text())
    _one_line_error(capsys, ["--checkpoint", str(tmp_path), "--suite", "anymdp-16"], "no checkpoint")
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / "checkpoints").symlink_to(workdir / "checkpoints")
    raw = yaml.safe_load((workdir / "config.yaml").read_text())
    raw["model"]["d_model"] = 32
    (mismatched / "config.yaml").write_text(yaml.safe_dump(raw))
    _one_line_error(capsys, ["--checkpoint", str(mismatched), "--suite", "anymdp-16"], "does not match the config: ")
    _one_line_error(capsys, ["--checkpoint", str(workdir), "--suite", "anymdp-64"], "fits the model")
    _one_line_error(capsys, ["--checkpoint", str(workdir), "--suite", "nosuch"], "unknown suite")


def test_bad_out_fails_before_any_work(workdir, tmp_path, capsys):
    """--out is checked first: a file there fails in one line before the model is even loaded."""
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["--checkpoint", str(tmp_path / "nope"), "--suite", "anymdp-16", "--out", str(tmp_path / "file")],
                    f"--out {tmp_path / 'file'}: is a file, not a directory")
    _one_line_error(capsys, ["--checkpoint", str(workdir), "--suite", "anymdp-16", "--out", str(tmp_path / "file" / "x")],
                    f"--out {tmp_path / 'file' / 'x'}: cannot be created (Not a directory)")


def test_end_to_end_writes_reports(workdir, tmp_path):
    out = tmp_path / "eval"
    results = run(str(workdir), ["anymdp-16"], modes=["online", "offline"], out=out, n_tasks=3, steps=256,
                  window=128, context_steps=64, log=lambda *_: None)
    agents = {"model", "random", "oracle", "q_learning", "model_based", "ppo"}
    assert {(r.mode, r.agent) for r in results} == {(m, a) for m in ("online", "offline") for a in agents}
    scores = {(r.mode, r.agent): np.nanmean(r.scores) for r in results}
    assert abs(scores["online", "oracle"] - 1) < 0.3 and abs(scores["online", "random"]) < 0.3
    assert all(np.isfinite(v) for v in scores.values())
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 6 * 2 and {r["step"] for r in rows} == {"128", "256"}
    assert (out / "summary.csv").is_file()
    assert (out / "anymdp-16_online.png").stat().st_size > 0 and (out / "anymdp-16_offline.png").is_file()


def test_the_model_is_sampled_at_its_configs_temperature_by_default(workdir, tmp_path):
    """Without ``temperature``, ``gather_steps`` and ``untried_first`` the model plays as its run's
    ``eval`` section says (here greedy after 16 steps at 1, untried actions first), as explicit
    values do, not at 1, nor greedy throughout, nor with repeats while gathering."""
    greedy = tmp_path / "greedy"
    greedy.mkdir()
    (greedy / "checkpoints").symlink_to(workdir / "checkpoints")
    raw = yaml.safe_load((workdir / "config.yaml").read_text())
    raw.setdefault("eval", {}).update(temperature=0.0, gather_steps=16, untried_first=True)
    (greedy / "config.yaml").write_text(yaml.safe_dump(raw))
    play = lambda **kw: run(str(greedy), ["anymdp-16"], modes=["online"], agents=["model"], out=tmp_path / "eval",
                            n_tasks=2, steps=128, window=64, log=lambda *_: None, **kw)[0].curves
    default = play()
    np.testing.assert_array_equal(default, play(temperature=0.0, gather_steps=16, untried_first=True))
    assert not np.array_equal(default, play(temperature=1.0))
    assert not np.array_equal(default, play(gather_steps=0))
    assert not np.array_equal(default, play(untried_first=False))


def test_bandit_suite_plays_the_bandit_baselines(tmp_path):
    """bandit-5 without a model: its own baselines by default; the bandit algorithms land between
    random (0) and oracle (1), and well above random over 256 pulls."""
    results = run(None, ["bandit-5"], modes=["online"], out=tmp_path, n_tasks=8, log=lambda *_: None)
    scores = {r.agent: np.nanmean(r.scores) for r in results}
    assert set(scores) == {"random", "oracle", "epsilon_greedy", "ucb1", "thompson"}
    assert abs(scores["oracle"] - 1) < 0.1 and abs(scores["random"]) < 0.2
    assert all(0.4 < scores[a] < 1.05 for a in ("epsilon_greedy", "ucb1", "thompson")), scores


def test_contextual_bandit_suite_plays_per_context_baselines(tmp_path):
    """cbandit-8 without a model: the bandit algorithms keep statistics per context, so over 1024
    pulls (128 per context) they land well above random; oracle 1 by construction."""
    results = run(None, ["cbandit-8"], modes=["online"], out=tmp_path, n_tasks=4, log=lambda *_: None)
    scores = {r.agent: np.nanmean(r.scores) for r in results}
    assert set(scores) == {"random", "oracle", "epsilon_greedy", "ucb1", "thompson"}
    assert abs(scores["oracle"] - 1) < 0.1 and abs(scores["random"]) < 0.2
    assert all(0.4 < scores[a] < 1.05 for a in ("epsilon_greedy", "thompson")), scores


def test_cli_sampling_flags_default_to_the_runs_eval_section():
    """``omnirl-eval``'s sampling flags: absent, None (the run's ``eval`` section decides)."""
    from omnirl_jax.eval.cli import parse_args

    base = ["--checkpoint", "run", "--suite", "bandit-5"]
    assert parse_args(base).untried_first is None and parse_args(base).gather_steps is None
    assert parse_args(base + ["--untried-first"]).untried_first is True
    assert parse_args(base + ["--no-untried-first", "--gather-steps", "5"]).untried_first is False
