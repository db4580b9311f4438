"""Compiled dynamics shared by the single env, the batched env and the data generator.

Why one kernel: ``AnyMDP-v0``, the vector env and ``omnirl_jax.data`` all step tasks through
``step_env`` below, so a seed gives the same trajectory in each of them.

``TaskTables`` holds a batch of tasks (axis 0 = task) as sampling tables:

* each ``(s, a)`` row of the transition is stored over its non-zero window ``[lo, lo + width)``
  as a Walker alias table (one uniform per draw, O(1)); rewards are stored over the same window,
  in float32 (the batch of 4096 tasks must fit in memory);
* emissions are small categoricals ``obs_ids`` / ``obs_cdf`` per state (one entry for an MDP,
  the state's observation id, so no random number is spent on it);
* ``ends[i, s]`` says that arriving in ``s`` ends the episode (terminal states, and the single
  state of a bandit, which ends every episode after one step).

Randomness: every env owns a SplitMix64 stream, a ``uint64`` state in an array ``rng[i]``
advanced in place; ``seed_streams`` derives those states from a ``numpy.random.Generator``.
The stream is counter-based, so any consumer (env, batched env, generator) replays the same
numbers for the same seed whatever else runs beside it.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from numba import njit

from anymdp_gym.task import Task

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53


class TaskTables(NamedTuple):
    """Sampling tables of a batch of tasks (see module doc); all arrays, axis 0 = task."""

    lo: np.ndarray  # int32 [N, n, A]
    width: np.ndarray  # int32 [N, n, A]
    alias_prob: np.ndarray  # float32 [N, n, A, W]
    alias_idx: np.ndarray  # int16 [N, n, A, W]
    reward_mean: np.ndarray  # float32 [N, n, A, W]
    reward_std: np.ndarray  # float32 [N, n, A, W]
    ends: np.ndarray  # bool [N, n]
    start_states: np.ndarray  # int32 [N, M]
    start_cdf: np.ndarray  # float64 [N, M], padded with 1.0
    obs_ids: np.ndarray  # int32 [N, n, K]
    obs_cdf: np.ndarray  # float64 [N, n, K], padded with 1.0
    max_steps: np.ndarray  # int64 [N]


# --------------------------------------------------------------------------- random streams
def seed_streams(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` independent SplitMix64 states drawn from ``rng``."""
    return rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)


@njit(cache=True, inline="always")
def next_u64(rng, i):
    z = rng[i] + _GOLDEN
    rng[i] = z
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def uniform(rng, i):
    """Uniform in [0, 1) from stream ``i``."""
    return np.float64(next_u64(rng, i) >> _S11) * _TO_UNIT


@njit(cache=True, inline="always")
def normal(rng, i):
    """Standard normal from stream ``i`` (Box-Muller, two uniforms)."""
    u1 = uniform(rng, i)
    u2 = uniform(rng, i)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


@njit(cache=True, inline="always")
def categorical(cdf, rng, i):
    """Index drawn from a cumulative distribution (padded with 1.0)."""
    u = uniform(rng, i)
    k = 0
    while k < cdf.size - 1 and u >= cdf[k]:
        k += 1
    return k


# --------------------------------------------------------------------------- stepping
@njit(cache=True, inline="always")
def observe(tables, i, s, rng):
    if tables.obs_ids.shape[2] == 1:
        return tables.obs_ids[i, s, 0]
    return tables.obs_ids[i, s, categorical(tables.obs_cdf[i, s], rng, i)]


@njit(cache=True, inline="always")
def reset_env(tables, i, rng):
    """Draw a start state of task ``i``: returns ``(state, obs)``."""
    k = 0 if tables.start_cdf.shape[1] == 1 else categorical(tables.start_cdf[i], rng, i)
    s = tables.start_states[i, k]
    return s, observe(tables, i, s, rng)


@njit(cache=True, inline="always")
def step_env(tables, i, s, a, rng):
    """One transition of task ``i`` from internal state ``s`` with action ``a``.

    Returns ``(next_state, obs, reward, mean_reward, terminated)``; the caller counts steps and
    truncates at ``tables.max_steps[i]``.
    """
    u = uniform(rng, i) * tables.width[i, s, a]
    k = int(u)
    if u - k >= tables.alias_prob[i, s, a, k]:
        k = tables.alias_idx[i, s, a, k]
    nxt = tables.lo[i, s, a] + k
    mean = np.float64(tables.reward_mean[i, s, a, k])
    std = tables.reward_std[i, s, a, k]
    reward = mean + std * normal(rng, i) if std > 0.0 else mean
    return nxt, observe(tables, i, nxt, rng), reward, mean, tables.ends[i, nxt]


# --------------------------------------------------------------------------- table building
@njit(cache=True)
def _alias_rows(transition, reward, noise, lo, width, prob_out, idx_out, mean_out, std_out):
    """Vose's alias method for every row's window, plus the window's rewards."""
    n, n_actions, _ = transition.shape
    for s in range(n):
        for a in range(n_actions):
            w = width[s, a]
            if w == 0:
                continue
            base = lo[s, a]
            scaled = np.empty(w)
            for k in range(w):
                scaled[k] = transition[s, a, base + k]
                mean_out[s, a, k] = reward[s, a, base + k]
                std_out[s, a, k] = noise[s, a, base + k]
            scaled *= w / scaled.sum()
            small = np.empty(w, dtype=np.int64)
            large = np.empty(w, dtype=np.int64)
            n_small, n_large = 0, 0
            for k in range(w):
                if scaled[k] < 1.0:
                    small[n_small] = k
                    n_small += 1
                else:
                    large[n_large] = k
                    n_large += 1
            while n_small > 0 and n_large > 0:
                n_small -= 1
                lo_k = small[n_small]
                hi_k = large[n_large - 1]
                prob_out[s, a, lo_k] = scaled[lo_k]
                idx_out[s, a, lo_k] = hi_k
                scaled[hi_k] = scaled[hi_k] + scaled[lo_k] - 1.0
                if scaled[hi_k] < 1.0:
                    n_large -= 1
                    small[n_small] = hi_k
                    n_small += 1
            for k in large[:n_large]:
                prob_out[s, a, k] = 1.0
                idx_out[s, a, k] = k
            for k in small[:n_small]:
                prob_out[s, a, k] = 1.0
                idx_out[s, a, k] = k


def compile_tasks(tasks: Sequence[Task]) -> TaskTables:
    """Sampling tables for ``tasks`` (all with the same number of actions)."""
    if len(tasks) == 0:
        raise ValueError("compile_tasks needs at least one task")
    n_actions = tasks[0].n_actions
    if any(t.n_actions != n_actions for t in tasks):
        raise ValueError("all tasks of a batch must have the same number of actions")
    windows = []
    for t in tasks:
        nz = t.transition != 0.0
        any_nz = nz.any(axis=2)
        lo = np.where(any_nz, nz.argmax(axis=2), 0)
        hi = np.where(any_nz, t.n_active - nz[:, :, ::-1].argmax(axis=2), 0)
        windows.append((lo, hi - lo))
    n_max = max(t.n_active for t in tasks)
    w_max = max(int(w.max()) for _, w in windows)
    m_max = max(t.start_states.size for t in tasks)
    k_max = max(1 if t.emission is None else int((t.emission > 0).sum(axis=1).max()) for t in tasks)
    n_tasks = len(tasks)
    tables = TaskTables(
        lo=np.zeros((n_tasks, n_max, n_actions), np.int32),
        width=np.zeros((n_tasks, n_max, n_actions), np.int32),
        alias_prob=np.ones((n_tasks, n_max, n_actions, w_max), np.float32),
        alias_idx=np.zeros((n_tasks, n_max, n_actions, w_max), np.int16),
        reward_mean=np.zeros((n_tasks, n_max, n_actions, w_max), np.float32),
        reward_std=np.zeros((n_tasks, n_max, n_actions, w_max), np.float32),
        ends=np.zeros((n_tasks, n_max), np.bool_),
        start_states=np.zeros((n_tasks, m_max), np.int32),
        start_cdf=np.ones((n_tasks, m_max), np.float64),
        obs_ids=np.zeros((n_tasks, n_max, k_max), np.int32),
        obs_cdf=np.ones((n_tasks, n_max, k_max), np.float64),
        max_steps=np.array([t.max_steps for t in tasks], np.int64),
    )
    for i, (task, (lo, width)) in enumerate(zip(tasks, windows)):
        n = task.n_active
        tables.lo[i, :n] = lo
        tables.width[i, :n] = width
        prob = np.ones((n, n_actions, w_max))
        idx = np.zeros((n, n_actions, w_max), np.int64)
        mean = np.zeros((n, n_actions, w_max))
        std = np.zeros((n, n_actions, w_max))
        _alias_rows(task.transition, task.reward, task.reward_noise, lo, width, prob, idx, mean, std)
        tables.alias_prob[i, :n] = prob
        tables.alias_idx[i, :n] = idx
        tables.reward_mean[i, :n] = mean
        tables.reward_std[i, :n] = std
        tables.ends[i, :n] = task.terminal | (n == 1)
        m = task.start_states.size
        tables.start_states[i, :m] = task.start_states
        tables.start_cdf[i, :m] = np.cumsum(task.start_probs)
        tables.start_cdf[i, m - 1 :] = 1.0
        if task.emission is None:
            tables.obs_ids[i, :n, 0] = task.state_mapping
        else:
            for s in range(n):
                ids = np.flatnonzero(task.emission[s] > 0)
                tables.obs_ids[i, s, : ids.size] = ids
                tables.obs_ids[i, s, ids.size :] = ids[-1]
                tables.obs_cdf[i, s, : ids.size] = np.cumsum(task.emission[s, ids])
                tables.obs_cdf[i, s, ids.size - 1 :] = 1.0
    return tables
