"""Live Gymnasium tasks: lockstep play with episode ends where the env puts them, reference
returns of the controllers above random, and (slow) omnirl-eval's darkroom and live suites."""

import csv

import numpy as np
import pytest
from conftest import tiny_checkpoint

from anymdp_gym.solvers import RandomSolver
from omnirl_jax.eval import live
from omnirl_jax.eval.cli import main
from omnirl_jax.eval.evaluate import run
from omnirl_jax.eval.suites import get_suite


def test_play_steps_instances_in_lockstep():
    instances = get_suite("mountaincar").instances("MountainCar", n_obs=100, n_tasks=2)
    game = live.LivePlay(instances, n_obs=100, n_steps=450, seed=0)
    seen = []

    class Recorder(live.SolverPlayer):
        def act(self, obs):
            seen.append(obs.copy())
            return super().act(obs)

    reward, done = live.play(lambda envs: Recorder([RandomSolver(3, seed=i) for i in range(2)]), game)
    assert np.all(reward == -1) and reward.shape == (2, 450)
    np.testing.assert_array_equal(np.flatnonzero(done[0]), [199, 399])  # truncated at 200 steps
    assert all(set(np.stack(seen)[:, i]) <= set(inst.mapping) for i, inst in enumerate(instances))


@pytest.mark.parametrize("name", ["MountainCar", "Pendulum"])
def test_controllers_beat_random(name):
    r_random, r_oracle = live.reference_returns(live.LIVE_TASKS[name], seed=0, episodes=3)
    assert r_oracle > r_random + (50 if name == "MountainCar" else 500), (r_random, r_oracle)


def test_live_suite_refuses_table_modes_in_one_line(tmp_path, capsys):
    assert main(["--suite", "pendulum", "--modes", "offline,imitation", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("plays online only, not --modes offline,imitation"), err


@pytest.mark.slow
def test_darkroom_and_live_suites_end_to_end(tmp_path):
    """A tiny 81-id model and the baselines on darkroom (all modes), mountaincar and pendulum
    (online; the other modes are skipped), writing curves and plots."""
    workdir = tiny_checkpoint(tmp_path / "run", n_states=81)
    out = tmp_path / "eval"
    lines = []
    results = run(str(workdir), ["darkroom", "mountaincar", "pendulum"], modes=["online", "offline"], out=out,
                  n_tasks=2, steps=512, window=256, context_steps=64, log=lines.append)
    scores = {(r.suite, r.mode, r.agent): np.nanmean(r.scores) for r in results}
    agents = ("model", "random", "oracle", "q_learning", "model_based", "ppo")
    assert set(scores) == ({("darkroom", m, a) for m in ("online", "offline") for a in agents}
                           | {(s, "online", a) for s in ("mountaincar", "pendulum") for a in agents})
    assert all(np.isfinite(v) for v in scores.values())
    assert scores["darkroom", "online", "oracle"] == 1.0
    assert scores["mountaincar", "online", "oracle"] > 0.8 and scores["pendulum", "online", "oracle"] > 0.8
    assert any("skipping mode(s) offline of mountaincar" in line for line in lines)
    with open(out / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == len(results)
    assert all((out / f"{s}_online.png").is_file() for s in ("darkroom", "mountaincar", "pendulum"))
