"""The shared step kernel: alias tables, random streams, the normal sampler, batch invariance."""

import math

import numpy as np
import pytest
from numba import njit

from anymdp_gym import add_emission, sample_garnet_task, sample_task
from anymdp_gym.dynamics import compile_tasks, reset_env, step_env
from anymdp_gym.random_stream import normal, seed_streams, uniform
from anymdp_gym.task import Task


def random_task(seed: int, n: int = 12, n_actions: int = 5) -> Task:
    """Rows with random windows, tiny and single-entry ones included; random rewards and noise."""
    rng = np.random.default_rng(seed)
    transition = np.zeros((n, n_actions, n))
    for s in range(n):
        for a in range(n_actions):
            lo = rng.integers(n)
            width = rng.integers(1, n - lo + 1)
            row = rng.exponential(size=width) * (rng.random(width) < 0.7)
            row[0] = max(row[0], 1e-300)  # a tiny but non-zero entry at the window edge
            transition[s, a, lo : lo + width] = row / row.sum()
    return Task(
        n_states=n, transition=transition, reward=rng.normal(size=transition.shape),
        reward_noise=rng.exponential(size=transition.shape) * (rng.random(transition.shape) < 0.5),
        start_states=np.array([0, 1]), start_probs=np.array([0.3, 0.7]), terminal=np.zeros(n, bool),
        goal_terminates=False, max_steps=50, state_mapping=rng.permutation(n),
    )


def implied_rows(tables, i, n, n_actions):
    """The next-state distribution each alias row encodes, and the outcome data it returns."""
    probs = np.zeros((n, n_actions, n))
    mean, std = np.full((n, n_actions, n), np.nan), np.full((n, n_actions, n), np.nan)
    for s in range(n):
        for a in range(n_actions):
            offset, width = tables.rows[i, s, a]
            for rec in tables.slots[tables.slot_base[i] + offset : tables.slot_base[i] + offset + width]:
                probs[s, a, rec["next"]] += rec["cut"] / width
                probs[s, a, rec["alt_next"]] += (1.0 - rec["cut"]) / width
                mean[s, a, rec["next"]], std[s, a, rec["next"]] = rec["mean"], rec["std"]
                mean[s, a, rec["alt_next"]], std[s, a, rec["alt_next"]] = rec["alt_mean"], rec["alt_std"]
    return probs, mean, std


@pytest.mark.parametrize("seed", range(4))
def test_alias_tables_encode_random_rows_exactly(seed):
    tasks = [random_task(seed), sample_task(16, seed=seed), sample_garnet_task(8, 2, seed=seed, branching=3)]
    tables = compile_tasks([tasks[0], tasks[1]])
    for i, task in enumerate(tasks):
        one = compile_tasks([task]) if i == 2 else tables
        k = 0 if i == 2 else i
        probs, mean, std = implied_rows(one, k, task.n_active, task.n_actions)
        np.testing.assert_allclose(probs, task.transition, atol=1e-12)
        seen = ~np.isnan(mean)
        assert np.all(seen[task.transition > 0])
        np.testing.assert_array_equal(mean[seen], task.reward[seen].astype(np.float32))
        np.testing.assert_array_equal(std[seen], task.reward_noise[seen].astype(np.float32))


@njit  # not cached: a cache would keep a stale inlined step_env (keyed to this file only)
def _draw_many(tables, i, s, a, rng, n):
    nxt = np.empty(n, np.int64)
    rewards = np.empty(n)
    for k in range(n):
        nxt[k], _, rewards[k], _, _ = step_env(tables, i, s, a, rng)
    return nxt, rewards


def test_empirical_transitions_and_reward_noise_match_the_task():
    task = sample_task(32, seed=5)
    tables = compile_tasks([task])
    rng = seed_streams(np.random.default_rng(0), 1)
    n = 200_000
    for s, a in [(0, 0), (int(task.start_states[0]), 2), (10, 4)]:
        if task.terminal[s]:
            continue
        nxt, rewards = _draw_many(tables, 0, s, a, rng, n)
        p = task.transition[s, a]
        support = p > 1e-3
        counts = np.bincount(nxt, minlength=task.n_active)
        expected = n * p[support]
        chi2 = ((counts[support] - expected) ** 2 / expected).sum()
        dof = support.sum() - 1
        assert chi2 < dof + 6 * math.sqrt(2 * dof) + 10, (s, a, chi2, dof)
        assert counts[p == 0].sum() == 0
        j = np.flatnonzero(support)[np.argmax(task.reward_noise[s, a, support])]
        sel = rewards[nxt == j]
        sigma = np.float32(task.reward_noise[s, a, j])
        assert abs(sel.mean() - np.float32(task.reward[s, a, j])) < 5 * sigma / math.sqrt(sel.size) + 1e-6
        if sigma > 0:
            assert abs(sel.std() / sigma - 1.0) < 5 / math.sqrt(sel.size) + 0.01


@njit
def _normals(rng, n):
    out = np.empty(n)
    for k in range(n):
        out[k] = normal(rng, 0)
    return out


def test_normal_is_standard_normal_including_tails():
    x = _normals(seed_streams(np.random.default_rng(1), 1), 1_000_000)
    xs = np.sort(x)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(xs[::50] / math.sqrt(2.0)))
    ks = np.max(np.abs(cdf - (np.arange(0, xs.size, 50) + 0.5) / xs.size))
    assert ks < 2.0 / math.sqrt(xs.size) + 1e-4
    tail = (np.abs(x) > 3.6541528853610088).mean() * x.size  # beyond the ziggurat's base strip
    expected = math.erfc(3.6541528853610088 / math.sqrt(2.0)) * x.size
    assert abs(tail - expected) < 5 * math.sqrt(expected)
    assert abs(x.mean()) < 5e-3 and abs(x.std() - 1.0) < 5e-3


def test_streams_are_reproducible_and_independent():
    a = seed_streams(np.random.default_rng(7), 3)
    b = seed_streams(np.random.default_rng(7), 3)
    np.testing.assert_array_equal(a, b)
    draws = np.array([[uniform(a, i) for _ in range(1000)] for i in range(3)])
    assert np.all((draws >= 0) & (draws < 1))
    assert abs(np.corrcoef(draws)[0, 1]) < 0.15
    assert [uniform(b, 0) for _ in range(5)] == list(draws[0, :5])


@njit
def _trajectory(tables, i, rng, n):
    out = np.empty((n, 3))
    s, o = reset_env(tables, i, rng)
    for k in range(n):
        s, o, r, _, end = step_env(tables, i, s, k % 5, rng)
        out[k, 0], out[k, 1], out[k, 2] = s, o, r
        if end:
            s, o = reset_env(tables, i, rng)
    return out


def test_a_task_steps_the_same_whatever_batch_it_is_compiled_in():
    """Padding to the batch's widest start set or emission must not change a task's stream."""
    task = sample_task(16, seed=1)
    other = add_emission(sample_task(16, seed=2), 16, seed=3)
    alone = compile_tasks([task])
    batch = compile_tasks([other, task])
    assert batch.obs_ids.shape[2] > 1
    seeds = seed_streams(np.random.default_rng(0), 1)
    rng_alone, rng_batch = seeds.copy(), np.array([0, seeds[0]], np.uint64)
    np.testing.assert_array_equal(_trajectory(alone, 0, rng_alone, 500), _trajectory(batch, 1, rng_batch, 500))


def test_compile_tasks_rejects_bad_batches():
    with pytest.raises(ValueError, match="at least one task"):
        compile_tasks([])
    with pytest.raises(ValueError, match="same number of actions"):
        compile_tasks([sample_task(8, 2, seed=0), sample_task(8, 3, seed=0)])
