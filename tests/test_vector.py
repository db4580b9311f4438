"""The Numba-batched vector envs: conventions, seeding, equality with single envs, errors."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode

import anymdp_gym  # noqa: F401  (registers the ids)
from anymdp_gym import sample_task
from anymdp_gym.vector import AnyMDPVectorEnv


def make_vec(env_id="AnyMDP-v0", num_envs=4, **kwargs):
    kwargs.setdefault("n_states", 16)
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)


def test_conventions():
    envs = make_vec(num_envs=3, n_actions=4)
    assert isinstance(envs.unwrapped, AnyMDPVectorEnv)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert envs.single_observation_space == gym.spaces.Discrete(16)
    assert envs.single_action_space == gym.spaces.Discrete(4)
    assert envs.action_space == gym.spaces.MultiDiscrete([4, 4, 4])
    obs, info = envs.reset(seed=0)
    assert obs.shape == (3,) and obs.dtype == np.int64 and obs in envs.observation_space
    obs, rewards, term, trunc, info = envs.step(envs.action_space.sample())
    assert rewards.dtype == np.float64 and term.dtype == np.bool_ and trunc.dtype == np.bool_
    for key in ("mean_reward", "state", "oracle_value", "final_obs"):
        assert info[key].shape == (3,) and info[f"_{key}"].dtype == np.bool_


@pytest.mark.parametrize(
    "env_id,kwargs",
    [
        ("AnyMDP-v0", {}),
        ("AnyMDP-v0", {"min_states": 8}),
        ("AnyMDP-v0", {"n_states": 1}),
        ("AnyPOMDP-v0", {"n_obs": 12}),
        ("GarnetMDP-v0", {"branching": 3}),
    ],
)
def test_sub_env_i_replays_the_single_env_seeded_with_seed_plus_i(env_id, kwargs):
    n, seed = 5, 100
    kwargs = {"n_states": 16, **kwargs}
    envs = make_vec(env_id, n, **kwargs)
    singles = [gym.make(env_id, **kwargs) for _ in range(n)]
    obs, info = envs.reset(seed=seed)
    first = [e.reset(seed=seed + i) for i, e in enumerate(singles)]
    assert list(obs) == [o for o, _ in first]
    assert list(info["oracle_value"]) == [i["oracle_value"] for _, i in first]
    actions = np.random.default_rng(0).integers(0, envs.single_action_space.n, (400, n))
    episodes = 0
    for a in actions:
        obs, rewards, term, trunc, info = envs.step(a)
        for i, env in enumerate(singles):
            o, r, te, tr, inf = env.step(a[i])
            assert (r, te, tr, inf["mean_reward"], o) == (
                rewards[i], term[i], trunc[i], info["mean_reward"][i], info["final_obs"][i]
            )
            assert info["_final_obs"][i] == (te or tr)
            if te or tr:
                episodes += 1
                o, inf = env.reset()
            assert (o, inf["state"], inf["oracle_value"]) == (obs[i], info["state"][i], info["oracle_value"][i])
    assert episodes > 0


def test_seed_list_and_task_rules():
    envs = make_vec(num_envs=3)
    envs.reset(seed=[7, 3, 9])
    single = gym.make("AnyMDP-v0", n_states=16)
    single.reset(seed=3)
    tasks = envs.unwrapped.tasks
    assert np.array_equal(tasks[1].transition, single.unwrapped.task.transition)
    envs.reset()
    assert envs.unwrapped.tasks is tasks
    envs.reset(options={"new_task": True})
    assert not np.array_equal(envs.unwrapped.tasks[0].transition, tasks[0].transition)
    envs.reset(seed=[7, 3, 9])
    assert np.array_equal(envs.unwrapped.tasks[0].transition, tasks[0].transition)
    given = sample_task(16, seed=1)
    envs.reset(options={"task": given})
    assert all(t is given for t in envs.unwrapped.tasks)


def test_reset_with_the_same_seed_reproduces_everything():
    envs = make_vec(num_envs=4)
    actions = np.random.default_rng(1).integers(0, 5, (50, 4))
    runs = []
    for _ in range(2):
        obs, _ = envs.reset(seed=12)
        runs.append([obs] + [np.concatenate([o, r]) for o, r, *_ in (envs.step(a) for a in actions)])
    np.testing.assert_array_equal(np.array(runs[0][1:]), np.array(runs[1][1:]))


def test_errors():
    envs = make_vec(num_envs=3)
    with pytest.raises(ResetNeeded):
        envs.step(np.zeros(3, np.int64))
    envs.reset(seed=0)
    for bad in (np.array([0, 1, 5]), np.array([0, -1, 1]), np.zeros(2, np.int64), np.array([0.0, 1.0, 2.0])):
        with pytest.raises(ValueError, match="actions") as excinfo:
            envs.step(bad)
        assert "\n" not in str(excinfo.value)
    with pytest.raises(ValueError, match="num_envs"):
        make_vec(num_envs=0)
    with pytest.raises(ValueError, match="n_states"):
        make_vec(num_envs=2, n_states=4)
    with pytest.raises(ValueError, match="seed"):
        envs.reset(seed=[1, 2])


def test_pickle_and_render():
    envs = make_vec(num_envs=2, render_mode="ansi")
    envs.reset(seed=0)
    clone = pickle.loads(pickle.dumps(envs))
    a = np.array([1, 2])
    np.testing.assert_array_equal(clone.step(a)[1], envs.step(a)[1])
    frames = envs.render()
    assert len(frames) == 2 and all(isinstance(f, str) for f in frames)
    images = make_vec(num_envs=2, render_mode="rgb_array")
    images.reset(seed=0)
    assert all(f.dtype == np.uint8 and f.ndim == 3 for f in images.render())
