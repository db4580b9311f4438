"""anymdp_gym.jax: JAX-free ``import anymdp_gym``, the gymnax interface, statistical equivalence
with the Numba env on one task, one vmapped call over different tasks, and rejax training on it."""

import subprocess
import sys
import tomllib
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import spaces
from scipy import stats

from anymdp_gym import add_emission, sample_task
from anymdp_gym.jax import AnyMDP, GarnetMDP, OneHotObservation

N_ENVS, N_STEPS = 256, 400
P_MIN = 1e-3
"""Smallest p-value a comparison may have (Bonferroni-corrected where there are many)."""


def test_anymdp_gym_imports_no_jax_and_installs_none():
    code = "import anymdp_gym, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'gymnax', 'flax')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    required = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]}
    assert required == {"gymnasium", "numpy", "numba"}
    assert {"jax", "gymnax"} <= {d.split(">")[0].split("<")[0] for d in project["optional-dependencies"]["jax"]}


@pytest.fixture(scope="module")
def task():
    """A task on which uniform-random play both terminates and truncates often: seed 20 with its
    episodes cut to 40 steps (about 2900 terminations and 1100 truncations in a run), reward
    noise up to 0.11."""
    return sample_task(16, 4, seed=20).replace(max_steps=40)


def _jax_run(task, seed):
    """``[T, N]`` records of uniform-random play through the gymnax interface."""
    env = AnyMDP(task.n_states, task.n_actions)
    params = env.params(task)

    @jax.jit
    def run(key):
        k_reset, k_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, N_ENVS), params)

        def body(carry, key):
            obs, state = carry
            k_act, k_step = jax.random.split(key)
            action = jax.random.randint(k_act, (N_ENVS,), 0, task.n_actions)
            new_obs, state, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_step, N_ENVS), state, action, params)
            return (new_obs, state), (obs, action, reward, info["final_obs"], info["terminated"], info["truncated"], done)

        return jax.lax.scan(body, (obs, state), jax.random.split(k_run, N_STEPS))[1]

    return [np.asarray(x) for x in run(jax.random.key(seed))]


def _numba_run(task, seed):
    envs = gym.make_vec("AnyMDP-v0", num_envs=N_ENVS, vectorization_mode="vector_entry_point", task=task)
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(N_STEPS):
        action = rng.integers(0, task.n_actions, N_ENVS)
        new_obs, reward, term, trunc, info = envs.step(action)
        rows.append((obs, action, reward, info["final_obs"], term, trunc, term | trunc))
        obs = new_obs
    return [np.stack(column) for column in zip(*rows)]


def _episodes(done, terminated):
    """Lengths of the complete episodes of ``[T, N]`` done flags, and whether each terminated."""
    lengths, ended_by_term = [], []
    for i in range(done.shape[1]):
        ends = np.flatnonzero(done[:, i])
        lengths.extend(np.diff(np.concatenate([[-1], ends])))
        ended_by_term.extend(terminated[ends, i])
    return np.array(lengths), np.array(ended_by_term)


def test_equivalent_to_the_numba_env_within_sampling_error(task):
    inverse = np.argsort(task.state_mapping)  # observation id -> internal state (an MDP: one to one)
    runs = {"jax": _jax_run(task, 0), "numba": _numba_run(task, 0)}
    counts, residuals, lengths, by_term = {}, {}, {}, {}
    for name, (obs, action, reward, arrival, term, trunc, done) in runs.items():
        s, s2 = inverse[obs], inverse[arrival]
        # Episode ends: terminated exactly on arrival in a terminal state, never with truncated;
        # truncated exactly at max_steps; every episode starts in a start state.
        np.testing.assert_array_equal(term, task.terminal[s2], err_msg=name)
        assert not np.any(term & trunc) and np.array_equal(done, term | trunc), name
        lengths[name], by_term[name] = _episodes(done, term)
        assert lengths[name].max() <= task.max_steps
        _, by_trunc = _episodes(done, trunc)
        assert np.all(lengths[name][by_trunc] == task.max_steps) and np.all(by_trunc == ~by_term[name]), name
        assert np.all(np.isin(s[1:][done[:-1]], task.start_states)) and np.all(np.isin(s[0], task.start_states)), name
        assert 0.1 < by_term[name].mean() < 0.9, name  # both kinds of end are exercised
        # Rewards: the mean exactly where there is no noise, else Normal(mean, std) residuals.
        mean, std = task.reward[s, action, s2], task.reward_noise[s, action, s2]
        np.testing.assert_allclose(reward[std == 0], mean[std == 0], rtol=1e-6, atol=1e-6, err_msg=name)
        residuals[name] = (reward - mean)[std > 0] / std[std > 0]
        counts[name] = np.zeros(task.transition.shape)
        np.add.at(counts[name], (s, action, s2), 1)
    # Transition frequencies of every (s, a) visited 100 times in each run: a chi-square test of
    # homogeneity between the two envs.
    p_values = []
    for s, a in np.argwhere((counts["jax"].sum(-1) >= 100) & (counts["numba"].sum(-1) >= 100)):
        table = np.stack([counts["jax"][s, a], counts["numba"][s, a]])
        table = table[:, table.sum(0) > 0]
        if table.shape[1] > 1:
            p_values.append(stats.chi2_contingency(table)[1])
    assert len(p_values) >= 20 and min(p_values) > P_MIN / len(p_values)
    for name in runs:
        assert abs(residuals[name].mean()) < 5 / np.sqrt(residuals[name].size) and abs(residuals[name].std() - 1) < 0.02
    assert stats.ks_2samp(residuals["jax"], residuals["numba"]).pvalue > P_MIN
    assert stats.ks_2samp(lengths["jax"], lengths["numba"]).pvalue > P_MIN
    n_j, n_n = by_term["jax"].size, by_term["numba"].size
    pooled = (by_term["jax"].sum() + by_term["numba"].sum()) / (n_j + n_n)
    z = (by_term["jax"].mean() - by_term["numba"].mean()) / np.sqrt(pooled * (1 - pooled) * (1 / n_j + 1 / n_n))
    assert abs(z) < 3.3  # two-sided p > 1e-3


def test_gymnax_interface_and_auto_reset(task):
    env = AnyMDP(16, 4)
    params = env.params(task)
    assert env.name == "AnyMDP-v0" and env.num_actions == 4
    assert isinstance(env.action_space(params), spaces.Discrete) and env.action_space(params).n == 4
    assert env.observation_space(params).n == 16
    obs, state = env.reset(jax.random.key(0), params)
    assert int(state.time) == 0 and int(obs) == task.state_mapping[int(state.state)]
    # From the step before the limit every step ends the episode and returns a reset state.
    last = state._replace(time=jnp.int32(task.max_steps - 1))
    keys = jax.random.split(jax.random.key(1), 64)
    obs, new, reward, done, info = jax.vmap(env.step, in_axes=(0, None, None, None))(keys, last, 0, params)
    assert np.all(np.asarray(done)) and np.all(np.asarray(new.time) == 0)
    np.testing.assert_array_equal(np.asarray(info["truncated"]), ~np.asarray(info["terminated"]))
    np.testing.assert_array_equal(np.asarray(info["discount"]), 1.0 - np.asarray(info["terminated"]))
    assert np.all(np.isin(np.asarray(new.state), task.start_states)) and np.array_equal(np.asarray(obs), np.asarray(new.obs))
    # step_env is step without the reset: the same transition for the same key.
    moved = jax.vmap(env.step_env, in_axes=(0, None, None, None))(keys, last, 0, params)
    np.testing.assert_array_equal(np.asarray(moved[0]), np.asarray(info["final_obs"]))
    np.testing.assert_array_equal(np.asarray(moved[2]), np.asarray(reward))
    # One-hot observations for network learners; the default params are the seed-0 task.
    wrapped = OneHotObservation(env)
    one_hot, _ = wrapped.reset(jax.random.key(0), params)
    assert wrapped.observation_space(params).shape == (16,) and float(one_hot.sum()) == 1.0 and int(one_hot.argmax()) == int(state.obs)
    np.testing.assert_array_equal(np.asarray(env.default_params.reward), sample_task(16, 4, seed=0).reward.astype(np.float32))
    assert GarnetMDP(16, 4).name == "GarnetMDP-v0"


def test_bad_tasks_fail_with_one_line():
    env = AnyMDP(16, 5)
    with pytest.raises(ValueError, match="task has 16 observations and 4 actions; this env's spaces need 16 and 5"):
        env.params(sample_task(16, 4, seed=0))
    with pytest.raises(ValueError, match="MDP tasks only"):
        env.params(add_emission(sample_task(16, 5, seed=0), 16, seed=1))
    with pytest.raises(ValueError, match="n_states must be an integer >= 8"):
        AnyMDP(4, 5)
    with pytest.raises(ValueError, match="GARNET tasks need n_states >= 8"):
        GarnetMDP(1, 5)


def test_vmap_steps_different_tasks_in_one_call():
    env = AnyMDP(16, 5)
    tasks = [sample_task(16, 5, seed=s) for s in range(4)] + [sample_task(16, 5, seed=9, min_states=8)]
    batch = env.params(tasks)  # the state subset of the last task is padded to 16 states
    keys = jax.random.split(jax.random.key(2), len(tasks))
    obs, state = jax.jit(jax.vmap(env.reset))(keys, batch)
    step = jax.jit(jax.vmap(env.step))
    for t in range(40):
        before = np.asarray(state.state)
        obs, state, reward, done, info = step(jax.random.split(jax.random.fold_in(keys[0], t), len(tasks)), state,
                                              jnp.full(len(tasks), t % 5), batch)
        arrival_obs = np.asarray(info["final_obs"])
        for i, task in enumerate(tasks):  # each row moved under its own task's transition
            arrival = np.argsort(task.state_mapping)[arrival_obs[i]]
            assert task.transition[before[i], t % 5, arrival] > 0
    # A row of the batched call equals the unbatched call on that task with the same key.
    single = env.params(tasks[1])
    key = jax.random.key(3)
    _, one = env.reset(key, single)
    together = jax.vmap(env.reset)(jnp.stack([key] * len(tasks[:4])), env.params(tasks[:4]))[1]
    assert int(one.state) == int(together.state[1])
    out_one = env.step(key, one, 2, single)
    out_all = jax.vmap(env.step)(jnp.stack([key] * 4), together, jnp.full(4, 2), env.params(tasks[:4]))
    for a, b in zip(jax.tree.leaves(out_one), jax.tree.leaves(out_all)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[1])


@pytest.mark.slow
def test_rejax_ppo_beats_random_on_a_fixed_task():
    from rejax import PPO

    from omnirl_jax.eval.baselines import reference_returns

    task = sample_task(16, 5, seed=3)  # three pitfalls; random play scores -0.001, PPO 0.97 at 262k steps
    r_random, r_oracle = reference_returns(task)
    env = OneHotObservation(AnyMDP(16, 5))
    algo = PPO.create(env=env, env_params=env.params(task), total_timesteps=131_072, eval_freq=32_768,
                      num_envs=64, num_steps=64, num_epochs=4, num_minibatches=4, learning_rate=1e-2, ent_coef=0.0)
    _, (_, returns) = jax.jit(algo.train)(jax.random.key(0))
    score = (np.asarray(returns).mean(axis=1) - r_random) / (r_oracle - r_random)  # 128 episodes per evaluation
    assert abs(score[0]) < 0.2 and score[-1] > 0.6, score
