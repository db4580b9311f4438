"""Compiled dynamics shared by the single env, the batched env and the data generator.

Why one kernel: ``AnyMDP-v0``, the vector env and ``omnirl_jax.data`` all step tasks through
``step_env`` below, so a seed gives the same trajectory in each of them. The envs' own loops
(``reset_single``/``step_single``, ``reset_batch``/``step_batch``) live here too. Caution for
``@njit(cache=True)`` callers in other files: Numba keys a cached function to its own source
file, so after this file changes, delete their ``__pycache__/*.nbi`` files (or they keep the old
inlined kernel).

``TaskTables`` holds a batch of tasks (axis 0 = task) as sampling tables. Stepping 4096 tasks of
128 states is bound by memory latency (the tables are far larger than the caches), so the layout
is chosen to touch one cache line per transition:

* each ``(s, a)`` row of the transition is a Walker alias table over the row's non-zero window,
  stored as a run of ``SLOT`` records (32 bytes, so a record never straddles a cache line). A
  record holds its cut probability and *both* outcomes it can return -- next state, mean reward
  and reward std -- so a draw reads that record only. Rows are packed back to back
  (``rows[i, s, a] = (offset, width)`` from ``slot_base[i]``), so a banded task costs its band,
  not ``n x n``. Rewards are float32;
* emissions are small categoricals ``obs_ids`` / ``obs_cdf`` per state (one entry for an MDP,
  the state's observation id, so no random number is spent on it);
* ``ends[i, s]`` says that arriving in ``s`` ends the episode (terminal states, and every state
  of a bandit or contextual bandit, ``Task.one_step``, which ends every episode after one pull).

Randomness: every env owns a stream ``rng[i]`` of ``anymdp_gym.random_stream``, so any consumer
(env, batched env, generator) replays the same numbers for the same seed. Every draw is
unconditional: a reset spends one uniform on the start state and one on the observation, a step one
uniform on the transition, one normal on the reward noise (even where the std is 0) and one uniform
on the observation (even for an MDP, whose emission has one outcome). Why: a draw taken only in
some cases (``if std > 0``, ``if several ids``) made the batched loop 2.4x slower, measured, even
when the branch always went the same way; and a task's stream then cannot depend on the batch it is
compiled in (tables are padded to the batch's widest emission and start set).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from numba import njit

from anymdp_gym.planning import row_windows
from anymdp_gym.random_stream import categorical, normal, uniform
from anymdp_gym.task import Task

SLOT = np.dtype(
    [
        ("cut", np.float64),  # keep the slot's own outcome when frac(u * width) < cut
        ("next", np.int32),  # own outcome: next state, mean reward, reward std
        ("mean", np.float32),
        ("std", np.float32),
        ("alt_next", np.int32),  # alias outcome
        ("alt_mean", np.float32),
        ("alt_std", np.float32),
    ]
)
assert SLOT.itemsize == 32


class TaskTables(NamedTuple):
    """Sampling tables of a batch of tasks (see module doc); axis 0 = task."""

    slots: np.ndarray  # SLOT [total slots], the alias rows of all tasks back to back
    slot_base: np.ndarray  # int64 [N], first slot of task i
    rows: np.ndarray  # int32 [N, n, A, 2], (offset from slot_base, width) of row (s, a)
    ends: np.ndarray  # bool [N, n]
    start_states: np.ndarray  # int32 [N, M]
    start_cdf: np.ndarray  # float64 [N, M], padded with 1.0
    obs_ids: np.ndarray  # int32 [N, n, K]
    obs_cdf: np.ndarray  # float64 [N, n, K], padded with 1.0
    max_steps: np.ndarray  # int64 [N]


class BatchEnvs(NamedTuple):
    """What the batched env carries between calls (axis 0 = env)."""

    states: np.ndarray  # int64 [N] internal state
    steps: np.ndarray  # int64 [N] actions taken in the current episode
    rng: np.ndarray  # uint64 [N] streams (``random_stream``)


class BatchSteps(NamedTuple):
    """What ``step_batch`` writes per env (``reset_batch`` writes ``obs`` and ``oracle`` only)."""

    obs: np.ndarray  # int64 [N] observation after the step (after an autoreset, the new episode's)
    rewards: np.ndarray  # float64 [N]
    means: np.ndarray  # float64 [N] noise-free reward of the transition
    terminated: np.ndarray  # bool [N]
    truncated: np.ndarray  # bool [N]
    oracle: np.ndarray  # float64 [N] ``values[i, state]`` of the returned observation's state
    final_obs: np.ndarray  # int64 [N] arrival observation


# --------------------------------------------------------------------------- stepping
@njit(cache=True, inline="always")
def observe(tables, i, s, rng):
    """Observation id of state ``s`` (always one uniform, see the module doc)."""
    return tables.obs_ids[i, s, categorical(tables.obs_cdf[i, s], rng, i)]


@njit(cache=True, inline="always")
def reset_env(tables, i, rng):
    """Draw a start state of task ``i``: returns ``(state, obs)``."""
    s = tables.start_states[i, categorical(tables.start_cdf[i], rng, i)]
    return s, observe(tables, i, s, rng)


@njit(cache=True, inline="always")
def alias_record(tables, i, s, a, rng):
    """Where ``draw_transition`` of task ``i`` lands: ``(record index, fraction)``, one uniform
    drawn. Reads the row's ``(offset, width)`` only (``step_batch`` runs it as a pass of its own)."""
    u = uniform(rng, i) * tables.rows[i, s, a, 1]
    k = int(u)
    return tables.slot_base[i] + tables.rows[i, s, a, 0] + k, u - k


@njit(cache=True, inline="always")
def read_record(tables, record, frac):
    """The outcome of alias record ``record`` at ``frac``: ``(next state, mean reward, std)``."""
    slot = tables.slots[record]
    if frac < slot.cut:
        return slot.next, np.float64(slot.mean), slot.std
    return slot.alt_next, np.float64(slot.alt_mean), slot.alt_std


@njit(cache=True, inline="always")
def draw_transition(tables, i, s, a, rng):
    """First half of ``step_env``: the next state of task ``i`` and its reward mean and std.

    It reads one row entry and one alias record (the only accesses far from the caches), so a
    batched loop can run it for every env first and overlap their memory misses (see
    ``step_batch``).
    """
    record, frac = alias_record(tables, i, s, a, rng)
    return read_record(tables, record, frac)


@njit(cache=True, inline="always")
def land(tables, i, nxt, mean, std, rng):
    """Second half of ``step_env``: reward noise, observation and episode end on arrival."""
    reward = mean + std * normal(rng, i)
    return nxt, observe(tables, i, nxt, rng), reward, mean, tables.ends[i, nxt]


@njit(cache=True, inline="always")
def step_env(tables, i, s, a, rng):
    """One transition of task ``i`` from internal state ``s`` with action ``a``.

    Returns ``(next_state, obs, reward, mean_reward, terminated)``; the caller counts steps and
    truncates at ``tables.max_steps[i]``.
    """
    nxt, mean, std = draw_transition(tables, i, s, a, rng)
    return land(tables, i, nxt, mean, std, rng)


# --------------------------------------------------------------------------- env loops
# The envs' compiled loops live here, beside what they inline: Numba's on-disk cache is keyed
# to the source file of the cached function only, so a loop in another file would keep running
# a stale copy of ``step_env`` after this file changes.
@njit(cache=True)
def reset_single(tables, cur, rng):
    """``reset_env`` of env 0 for the single env; ``cur = [state, steps]`` set in place."""
    s, obs = reset_env(tables, 0, rng)
    cur[0], cur[1] = s, 0
    return obs, s


@njit(cache=True)
def step_single(tables, cur, rng, a):
    """``step_env`` of env 0 for the single env, counting steps in ``cur`` and truncating."""
    s, obs, reward, mean, terminated = step_env(tables, 0, cur[0], a, rng)
    cur[0] = s
    cur[1] += 1
    return obs, reward, terminated, not terminated and cur[1] >= tables.max_steps[0], mean, s


@njit(cache=True)
def reset_batch(tables, values, envs, out):
    """``reset_env`` for every env of ``envs`` (a ``BatchEnvs``); ``out.oracle[i] = values[i, state]``."""
    states, steps, rng = envs
    for i in range(states.size):
        s, o = reset_env(tables, i, rng)
        states[i], steps[i], out.obs[i], out.oracle[i] = s, 0, o, values[i, s]


@njit(cache=True)
def step_batch(tables, values, envs, actions, out):
    """``step_env`` for every env of ``envs`` (a ``BatchEnvs``), written into ``out`` (a
    ``BatchSteps``), in three passes with the same draws in the same order.

    Why passes: at 4096 tasks the tables live in DRAM, and a transition reads two places that
    depend on each other (the row's ``(offset, width)``, then the alias record it points to).
    Each of the first two passes makes one of those reads per env with a short loop body, so the
    CPU keeps many envs' misses in flight, where the full step (normal sampler, observation,
    autoreset) fits only one or two in its out-of-order window. Measured at 4096 tasks, one
    thread: the draw in its own pass was 1.7x faster than the whole step in one loop (S = 16);
    the row read and the record read each in its own pass, against the two together
    (``benchmarks/bench_limits.py --sections env``, two runs of each, alternating): 10.6 and 15.6
    M steps/s against 8.8 and 9.1 at S = 16, 7.7 and 7.2 against 6.5 and 5.4 at S = 128. The last
    pass spells out ``land`` (the same draws in the same order; tests compare it with
    ``step_env``): calling it instead compiled to a loop half as fast, measured.
    """
    states, steps, rng = envs
    obs, rewards, means, terminated, truncated, oracle, final_obs = out
    n = states.size
    record = np.empty(n, np.int64)
    frac = np.empty(n)
    for i in range(n):
        record[i], frac[i] = alias_record(tables, i, states[i], actions[i], rng)
    nxt = np.empty(n, np.int64)
    std = np.empty(n)
    for i in range(n):
        nxt[i], means[i], std[i] = read_record(tables, record[i], frac[i])
    for i in range(n):
        s = nxt[i]
        r = means[i] + std[i] * normal(rng, i)
        o = observe(tables, i, s, rng)
        term = tables.ends[i, s]
        t = steps[i] + 1
        trunc = not term and t >= tables.max_steps[i]
        rewards[i], terminated[i], truncated[i], final_obs[i] = r, term, trunc, o
        if term or trunc:
            s, o = reset_env(tables, i, rng)
            t = 0
        states[i], steps[i], obs[i], oracle[i] = s, t, o, values[i, s]


# --------------------------------------------------------------------------- table building
@njit(cache=True)
def _fill_alias_rows(transition, reward, noise, window_lo, window_hi, rows, slots):
    """Vose's alias method for every row's window (``planning.row_windows``), written as ``SLOT``
    records; ``rows[s, a] = (offset, width)`` into ``slots``. Small entries are paired with large
    ones until one list empties; what is left has (up to rounding) probability exactly 1.
    """
    n, n_actions, _ = transition.shape
    scaled = np.empty(n)  # work buffers, reused by every row
    alias = np.empty(n, dtype=np.int64)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    offset = 0
    for s in range(n):
        for a in range(n_actions):
            lo, w = window_lo[s, a], window_hi[s, a] - window_lo[s, a]
            rows[s, a, 0] = offset
            rows[s, a, 1] = w
            if w == 0:
                continue
            total = transition[s, a, lo : lo + w].sum()
            n_small, n_large = 0, 0
            for k in range(w):
                scaled[k] = transition[s, a, lo + k] * (w / total)
                alias[k] = k
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
                alias[lo_k] = hi_k
                scaled[hi_k] = scaled[hi_k] + scaled[lo_k] - 1.0
                if scaled[hi_k] < 1.0:
                    n_large -= 1
                    small[n_small] = hi_k
                    n_small += 1
            for k in large[:n_large]:
                scaled[k] = 1.0
            for k in small[:n_small]:
                scaled[k] = 1.0
            for k in range(w):
                rec = slots[offset + k]
                j, alt = lo + k, lo + alias[k]
                rec.cut = scaled[k]
                rec.next = j
                rec.mean = reward[s, a, j]
                rec.std = noise[s, a, j]
                rec.alt_next = alt
                rec.alt_mean = reward[s, a, alt]
                rec.alt_std = noise[s, a, alt]
            offset += w


def compile_tasks(tasks: Sequence[Task]) -> TaskTables:
    """Sampling tables for ``tasks`` (all with the same number of actions)."""
    if len(tasks) == 0:
        raise ValueError("compile_tasks needs at least one task")
    n_actions = tasks[0].n_actions
    if any(t.n_actions != n_actions for t in tasks):
        raise ValueError("all tasks of a batch must have the same number of actions")
    windows = [row_windows(t.transition) for t in tasks]
    sizes = np.array([int((hi - lo).sum()) for lo, hi in windows], dtype=np.int64)
    n_max = max(t.n_active for t in tasks)
    m_max = max(t.start_states.size for t in tasks)
    k_max = max(1 if t.emission is None else int((t.emission > 0).sum(axis=1).max()) for t in tasks)
    n_tasks = len(tasks)
    tables = TaskTables(
        slots=np.zeros(int(sizes.sum()), SLOT),
        slot_base=np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64),
        rows=np.zeros((n_tasks, n_max, n_actions, 2), np.int32),
        ends=np.zeros((n_tasks, n_max), np.bool_),
        start_states=np.zeros((n_tasks, m_max), np.int32),
        start_cdf=np.ones((n_tasks, m_max), np.float64),
        obs_ids=np.zeros((n_tasks, n_max, k_max), np.int32),
        obs_cdf=np.ones((n_tasks, n_max, k_max), np.float64),
        max_steps=np.array([t.max_steps for t in tasks], np.int64),
    )
    for i, (task, window) in enumerate(zip(tasks, windows)):
        n = task.n_active
        base = tables.slot_base[i]
        _fill_alias_rows(
            task.transition, task.reward, task.reward_noise, *window,
            tables.rows[i, :n], tables.slots[base : base + sizes[i]],
        )
        tables.ends[i, :n] = task.terminal | task.one_step
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
