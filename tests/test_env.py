"""The single Gymnasium envs: checker, seeding, task rules, errors, pickling, rendering."""

import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

import anymdp_gym
from anymdp_gym import Task, sample_garnet_task, sample_task, value_iteration

IDS = ["AnyMDP-v0", "AnyPOMDP-v0", "GarnetMDP-v0"]


def rollout(env, seed, n_steps=300, first_reset=True):
    """``(obs, reward, terminated, truncated, mean_reward)`` rows of a fixed-action run."""
    rows = []
    if first_reset:
        obs, _ = env.reset(seed=seed)
        rows.append((obs, 0.0, False, False, 0.0))
    actions = np.random.default_rng(seed).integers(0, env.action_space.n, n_steps)
    for a in actions:
        obs, reward, term, trunc, info = env.step(a)
        rows.append((obs, reward, term, trunc, info["mean_reward"]))
        if term or trunc:
            obs, _ = env.reset()
            rows.append((obs, 0.0, False, False, 0.0))
    return rows


def same_task(a: Task, b: Task) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("transition", "reward", "reward_noise", "state_mapping"))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("env_id,kwargs", [(i, {}) for i in IDS] + [("AnyMDP-v0", {"n_states": 1}),
                                                                    ("AnyPOMDP-v0", {"n_obs": 9})])
def test_check_env_passes_without_warnings(env_id, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id, **kwargs)
        check_env(env.unwrapped)


def test_prefixed_id_and_spaces():
    env = gym.make("anymdp_gym:AnyMDP-v0", n_states=32, n_actions=3)
    assert env.observation_space == gym.spaces.Discrete(32) and env.action_space == gym.spaces.Discrete(3)
    assert gym.make("AnyPOMDP-v0", n_states=16, n_obs=7).observation_space == gym.spaces.Discrete(7)
    obs, info = env.reset(seed=0)
    assert type(obs) is int and set(info) == {"state", "oracle_value"}
    obs, reward, term, trunc, info = env.step(1)
    assert type(obs) is int and type(reward) is float and type(term) is bool and type(trunc) is bool
    assert set(info) == {"state", "oracle_value", "mean_reward"}
    task = env.unwrapped.task
    assert obs == task.state_mapping[info["state"]]
    assert info["oracle_value"] == pytest.approx(value_iteration(task, 0.99)[1][info["state"]])


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_task_and_trajectory(env_id):
    a, b = gym.make(env_id, n_states=16), gym.make(env_id, n_states=16)
    assert rollout(a, 3) == rollout(b, 3)
    assert same_task(a.unwrapped.task, b.unwrapped.task)
    assert rollout(a, 4) != rollout(b, 3)


def test_trajectory_is_bitwise_identical_in_another_process():
    code = (
        "import gymnasium as gym, anymdp_gym, sys; sys.path.insert(0, 'tests'); from test_env import rollout; "
        "env = gym.make('AnyPOMDP-v0', n_states=16); print(repr(rollout(env, 11, 200)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.stdout.strip() == repr(rollout(gym.make("AnyPOMDP-v0", n_states=16), 11, 200))


def test_task_kept_across_resets_and_redrawn_on_request():
    env = gym.make("AnyMDP-v0", n_states=16)
    env.reset(seed=1)
    first = env.unwrapped.task
    env.reset()
    assert env.unwrapped.task is first
    env.reset(options={"new_task": True})
    assert not same_task(env.unwrapped.task, first)
    env.reset(seed=1)
    assert same_task(env.unwrapped.task, first)
    given = sample_task(16, seed=99)
    env.reset(options={"task": given})
    assert env.unwrapped.task is given
    assert same_task(given, sample_task(16, seed=99))
    env.reset()
    assert env.unwrapped.task is given


def test_first_seeded_task_is_the_samplers_task_for_that_seed():
    env = gym.make("AnyMDP-v0", n_states=16)
    env.reset(seed=42)
    assert same_task(env.unwrapped.task, sample_task(16, seed=42))


def test_fixed_task_kwarg_and_xenoverse_dict():
    task = sample_garnet_task(12, 3, seed=0)
    env = gym.make("AnyMDP-v0", task=task)
    assert env.observation_space.n == 12 and env.action_space.n == 3
    env.reset(seed=0)
    assert env.unwrapped.task is task
    env.reset(seed=1)
    assert env.unwrapped.task is task
    with pytest.raises(ValueError, match="fixed task"):
        env.reset(options={"new_task": True})
    from_dict = gym.make("AnyMDP-v0", task=task.to_xenoverse())
    assert rollout(from_dict, 5) == rollout(env, 5)


def test_episode_end_rules():
    task = sample_garnet_task(8, 2, seed=0).replace(max_steps=5)  # no terminal states
    env = gym.make("AnyMDP-v0", task=task)
    env.reset(seed=0)
    ends = [env.step(0)[2:4] for _ in range(5)]
    assert ends == [(False, False)] * 4 + [(False, True)]
    with pytest.raises(ResetNeeded, match="reset"):
        env.step(0)
    bandit = gym.make("AnyMDP-v0", n_states=1, n_actions=3)
    bandit.reset(seed=0)
    assert bandit.step(2)[2] is True
    with pytest.raises(ResetNeeded):
        bandit.step(2)
    env = gym.make("AnyMDP-v0", n_states=16)
    env.reset(seed=0)
    terminal = env.unwrapped.task.terminal
    for _ in range(5000):
        obs, _, term, trunc, info = env.step(env.action_space.sample())
        assert term == bool(terminal[info["state"]])
        if term or trunc:
            env.reset()


def one_line(excinfo) -> bool:
    return "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    "env_id,kwargs,match",
    [
        ("AnyMDP-v0", {"n_states": 5}, "n_states"),
        ("AnyMDP-v0", {"n_states": 16.0}, "n_states"),
        ("AnyMDP-v0", {"n_actions": 1}, "n_actions"),
        ("AnyMDP-v0", {"n_states": 16, "min_states": 4}, "min_states"),
        ("AnyMDP-v0", {"min_forward": 0}, "min_forward"),
        ("AnyMDP-v0", {"task": "not a task"}, "task"),
        ("AnyMDP-v0", {"task": {"ns": 8}}, "lacks"),
        ("AnyPOMDP-v0", {"n_obs": 0}, "n_obs"),
        ("GarnetMDP-v0", {"n_states": 1}, "GARNET"),
        ("GarnetMDP-v0", {"n_states": 8, "branching": 9}, "branching"),
        ("AnyMDP-v0", {"family": "grid"}, "family"),
    ],
)
def test_bad_arguments_raise_one_line_errors(env_id, kwargs, match):
    with pytest.raises(ValueError, match=match) as excinfo:
        gym.make(env_id, **kwargs)
    assert one_line(excinfo)


def test_bad_calls_raise_one_line_errors():
    env = gym.make("AnyMDP-v0", n_states=16).unwrapped
    with pytest.raises(ResetNeeded) as excinfo:
        env.step(0)
    assert one_line(excinfo)
    env.reset(seed=0)
    for action in (-1, 5, 1.5, "1"):
        with pytest.raises(ValueError, match="action") as excinfo:
            env.step(action)
        assert one_line(excinfo)
    env.step(np.int64(4))
    with pytest.raises(ValueError, match="contradicts"):
        anymdp_gym.AnyMDPEnv(n_states=8, task=sample_task(16, seed=0))
    with pytest.raises(ValueError, match="spaces need"):
        env.reset(options={"task": sample_task(8, seed=0)})
    with pytest.raises(ValueError, match="render_mode"):
        anymdp_gym.AnyMDPEnv(render_mode="video")
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"seed": 3})


def test_pickled_env_continues_identically():
    env = gym.make("AnyPOMDP-v0", n_states=16)
    rollout(env, 2, 50)
    clone = pickle.loads(pickle.dumps(env))
    assert rollout(clone, 0, 200, first_reset=False) == rollout(env, 0, 200, first_reset=False)


def test_async_vector_env_runs_the_env():
    fns = [lambda: gym.make("anymdp_gym:AnyMDP-v0", n_states=16) for _ in range(2)]  # a fresh process registers on import
    # spawn, not fork: the test process may have JAX (multithreaded) loaded by other tests
    envs = gym.vector.AsyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, context="spawn")
    try:
        obs, _ = envs.reset(seed=[5, 6])
        out = envs.step(np.array([1, 2]))
    finally:
        envs.close()
    singles = [gym.make("AnyMDP-v0", n_states=16) for _ in range(2)]
    assert list(obs) == [e.reset(seed=s)[0] for e, s in zip(singles, (5, 6))]
    assert list(out[1]) == [e.step(a)[1] for e, a in zip(singles, (1, 2))]


@pytest.mark.parametrize("env_id", IDS)
def test_render_modes(env_id):
    text_env = gym.make(env_id, n_states=16, render_mode="ansi")
    _, info = text_env.reset(seed=0)
    text = text_env.render()
    assert isinstance(text, str) and "@" in text and "step 0" in text
    image_env = gym.make(env_id, n_states=16, render_mode="rgb_array")
    _, info = image_env.reset(seed=0)
    frame = image_env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] >= 256
    scale = frame.shape[0] // 16
    assert np.all(frame[info["state"] * scale, :, 2] >= 160)
    _, _, _, _, info = image_env.step(0)
    assert np.all(image_env.render()[info["state"] * scale, :, 2] >= 160)
