"""anymdp_gym.jax.dynamics against the Task it was built from: empirical statistics, episode ends,
padding, and the Gymnasium adapter's exact conversion."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anymdp_gym import sample_task
from anymdp_gym.jax import dynamics as env_jax
from omnirl_jax.eval.gym_adapter import task_from_gym

N_SAMPLES = 20_000


@pytest.fixture(scope="module")
def task():
    # Redraw until the task has reward noise somewhere and a terminal state, so both are tested.
    for seed in range(100):
        t = sample_task(16, 4, seed=seed)
        if t.terminal.any() and t.reward_noise.max() > 0.05:
            return t
    raise AssertionError("no suitable task")


def _from(params, s, steps=0):
    return env_jax.EnvState(jnp.int32(s), params.obs_id[s], jnp.int32(steps))


def _steps_from(params, s, a, steps=0, n=N_SAMPLES, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(lambda k: env_jax.step(params, _from(params, s, steps), jnp.int32(a), k)))(keys)


def test_reset_follows_start_distribution(task):
    params = env_jax.from_task(task)
    states = jax.vmap(lambda k: env_jax.reset(params, k))(jax.random.split(jax.random.key(1), N_SAMPLES))
    freq = np.bincount(np.asarray(states.state), minlength=task.n_active) / N_SAMPLES
    expected = np.zeros(task.n_active)
    expected[task.start_states] = task.start_probs
    np.testing.assert_allclose(freq, expected, atol=4 * np.sqrt(0.25 / N_SAMPLES))
    np.testing.assert_array_equal(np.asarray(states.obs), task.state_mapping[np.asarray(states.state)])
    assert np.all(np.asarray(states.time) == 0)


def test_transition_and_reward_statistics(task):
    params = env_jax.from_task(task)
    s = int(task.start_states[0])
    a = int(np.argmax((task.transition[s] * task.reward_noise[s]).sum(axis=1)))  # the noisiest action
    _, out = _steps_from(params, s, a)
    inverse = np.argsort(task.state_mapping)
    s2 = inverse[np.asarray(out.next_obs)]
    freq = np.bincount(s2, minlength=task.n_active) / N_SAMPLES
    np.testing.assert_allclose(freq, task.transition[s, a], atol=4 * np.sqrt(0.25 / N_SAMPLES))
    reward = np.asarray(out.reward)
    for j in np.flatnonzero(task.transition[s, a] > 0.05):
        r = reward[s2 == j]
        mean, std = task.reward[s, a, j], task.reward_noise[s, a, j]
        assert abs(r.mean() - mean) < 5 * max(std, 1e-3) / np.sqrt(r.size) + 1e-5
        assert abs(r.std() - std) < 0.1 * std + 1e-5
    np.testing.assert_array_equal(np.asarray(out.terminated), task.terminal[s2])


def test_terminal_and_truncation_reset(task):
    params = env_jax.from_task(task)
    pit = int(np.flatnonzero(task.terminal)[0])
    s, a = np.argwhere(task.transition[:, :, pit] > 0)[0]
    env, out = _steps_from(params, int(s), int(a), n=2000)
    hit = np.asarray(out.next_obs) == task.state_mapping[pit]
    assert hit.any()
    assert np.all(np.asarray(out.terminated)[hit]) and not np.any(np.asarray(out.truncated)[hit])
    assert np.all(np.asarray(env.time)[hit] == 0)  # reset on termination...
    assert np.all(np.isin(np.asarray(env.state)[hit], task.start_states))
    assert np.all(np.asarray(env.time)[~hit] == 1)  # ...and not otherwise
    # The max_steps-th action truncates unless it terminates.
    env, out = _steps_from(params, int(s), int(a), steps=task.max_steps - 1, n=2000)
    np.testing.assert_array_equal(np.asarray(out.truncated), ~np.asarray(out.terminated))
    assert np.all(np.asarray(env.time) == 0)


def test_padding_masks_actions_and_keeps_dynamics():
    small = sample_task(8, 2, seed=3)
    large = sample_task(16, 3, seed=4)
    params = env_jax.from_tasks([small, large], n_actions=5)
    assert params.log_transition.shape == (2, 16, 5, 16)
    np.testing.assert_array_equal(np.asarray(params.action_mask), [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    first = jax.tree.map(lambda x: x[0], params)
    np.testing.assert_allclose(np.exp(np.asarray(first.log_transition))[:8, :2, :8], small.transition, rtol=1e-6, atol=1e-30)
    live = int(small.start_states[0])
    _, out = _steps_from(first, live, 4, n=100)  # a padded action is a self-loop with reward 0
    assert np.all(np.asarray(out.next_obs) == small.state_mapping[live]) and np.all(np.asarray(out.reward) == 0)


def test_gym_adapter_is_exact_for_frozen_lake():
    task = task_from_gym("FrozenLake-v1", n_obs=32, seed=0, map_name="4x4")
    table = gym.make("FrozenLake-v1", map_name="4x4").unwrapped.P
    assert task.n_states == 32 and task.n_active == 16 and task.n_actions == 4 and task.max_steps == 100
    np.testing.assert_array_equal(np.flatnonzero(task.terminal), [5, 7, 11, 12, 15])
    for s in np.flatnonzero(~task.terminal):
        for a in range(4):
            expected = np.zeros(16)
            for p, s2, _, _ in table[s][a]:
                expected[s2] += p
            np.testing.assert_allclose(task.transition[s, a], expected)
    assert task.reward[14, 2, 15] == 1.0 and task.reward.sum() == task.reward[:, :, 15].sum()
    assert len(set(task.state_mapping)) == 16 and task.state_mapping.max() < 32
    with pytest.raises(ValueError, match="more than the model's"):
        task_from_gym("FrozenLake8x8-v1", n_obs=16)
