"""Exact planning on tabular tasks, compiled with Numba.

Why not the reference's value iteration: at gamma = 2**(-1/S) it needs thousands of damped
sweeps and stops at an RMS change of 1e-4, i.e. still ~1e-2 away from the fixed point. We use
policy iteration with an exact linear solve instead: a handful of iterations, each one
Gaussian elimination of ``I - gamma * P_pi``. That matrix is strictly diagonally dominant by
rows (each row of ``gamma * P_pi`` sums to at most gamma < 1), so elimination without pivoting
is stable and keeps the band of ``P_pi``: fill-in stays inside the transition band, and the
Bellman backups only visit each ``(s, a)`` row's non-zero window.

Terminal states have all-zero transition rows, so their Q-values are 0, as in the reference.
All functions take raw arrays (so the sampler can call them mid-construction); ``Task`` users
call ``value_iteration(task, gamma)`` and ``policy_evaluation(task, policy, gamma)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_MAX_POLICY_ITERATIONS = 1000


@njit(cache=True)
def row_windows(transition):
    """First and one-past-last non-zero next state of every ``(s, a)`` row."""
    n, n_actions, _ = transition.shape
    lo = np.zeros((n, n_actions), dtype=np.int64)
    hi = np.zeros((n, n_actions), dtype=np.int64)
    for s in range(n):
        for a in range(n_actions):
            first, last = n, -1
            for j in range(n):
                if transition[s, a, j] != 0.0:
                    if first == n:
                        first = j
                    last = j
            lo[s, a] = first if last >= 0 else 0
            hi[s, a] = last + 1
    return lo, hi


@njit(cache=True)
def expected_rewards(transition, reward, lo, hi):
    """``R[s, a] = sum_s' T[s, a, s'] * r[s, a, s']`` over each row's window."""
    n, n_actions, _ = transition.shape
    out = np.zeros((n, n_actions))
    for s in range(n):
        for a in range(n_actions):
            acc = 0.0
            for j in range(lo[s, a], hi[s, a]):
                acc += transition[s, a, j] * reward[s, a, j]
            out[s, a] = acc
    return out


@njit(cache=True)
def _backup(transition, exp_reward, values, gamma, lo, hi):
    """``Q[s, a] = R[s, a] + gamma * sum_s' T[s, a, s'] V[s']``."""
    n, n_actions, _ = transition.shape
    q = np.empty((n, n_actions))
    for s in range(n):
        for a in range(n_actions):
            acc = 0.0
            for j in range(lo[s, a], hi[s, a]):
                acc += transition[s, a, j] * values[j]
            q[s, a] = exp_reward[s, a] + gamma * acc
    return q


@njit(cache=True)
def _solve_diagonally_dominant(mat, rhs):
    """Solve ``mat @ x = rhs`` in place by Gaussian elimination without pivoting.

    Skips the zero tail of each column and row, so a banded matrix costs O(n * band^2).
    """
    n = mat.shape[0]
    lower = np.zeros(n, dtype=np.int64)  # last row with a non-zero in column k
    upper = np.zeros(n, dtype=np.int64)  # last column with a non-zero in row k
    for k in range(n):
        last_row, last_col = k, k
        for i in range(n):
            if mat[i, k] != 0.0:
                last_row = max(last_row, i)
            if mat[k, i] != 0.0:
                last_col = max(last_col, i)
        lower[k], upper[k] = last_row, last_col
    # Fill-in extends each row's reach to the reach of the rows above it in its band.
    for k in range(1, n):
        upper[k] = max(upper[k], upper[k - 1])
        lower[k] = max(lower[k], lower[k - 1])
    for k in range(n):
        pivot = mat[k, k]
        for i in range(k + 1, lower[k] + 1):
            factor = mat[i, k] / pivot
            if factor != 0.0:
                for j in range(k, upper[k] + 1):
                    mat[i, j] -= factor * mat[k, j]
                rhs[i] -= factor * rhs[k]
    x = np.zeros(n)
    for k in range(n - 1, -1, -1):
        acc = rhs[k]
        for j in range(k + 1, upper[k] + 1):
            acc -= mat[k, j] * x[j]
        x[k] = acc / mat[k, k]
    return x


@njit(cache=True)
def evaluate_policy(transition, exp_reward, policy, gamma, lo, hi):
    """Exact Q of a stochastic ``policy[s, a]``: solve ``(I - gamma P_pi) V = R_pi``."""
    n, n_actions, _ = transition.shape
    mat = np.zeros((n, n))
    rhs = np.zeros(n)
    for s in range(n):
        mat[s, s] = 1.0
        for a in range(n_actions):
            p = policy[s, a]
            if p == 0.0:
                continue
            rhs[s] += p * exp_reward[s, a]
            for j in range(lo[s, a], hi[s, a]):
                mat[s, j] -= gamma * p * transition[s, a, j]
    values = _solve_diagonally_dominant(mat, rhs)
    return _backup(transition, exp_reward, values, gamma, lo, hi)


@njit(cache=True)
def optimal_q(transition, exp_reward, gamma, lo, hi, init_actions):
    """Q* by policy iteration, starting from ``init_actions`` (a warm start, or -1s).

    Ties keep the incumbent action; a change needs a gain above 1e-12 relative, so the loop
    cannot cycle on rounding noise.
    """
    n, n_actions, _ = transition.shape
    actions = init_actions.copy()
    for s in range(n):
        if actions[s] < 0:
            actions[s] = np.argmax(exp_reward[s])
    policy = np.zeros((n, n_actions))
    q = np.zeros((n, n_actions))
    for _ in range(_MAX_POLICY_ITERATIONS):
        policy[:] = 0.0
        for s in range(n):
            policy[s, actions[s]] = 1.0
        q = evaluate_policy(transition, exp_reward, policy, gamma, lo, hi)
        changed = False
        for s in range(n):
            best = np.argmax(q[s])
            incumbent = q[s, actions[s]]
            if q[s, best] > incumbent + 1e-12 * max(1.0, abs(incumbent)):
                actions[s] = best
                changed = True
        if not changed:
            return q
    raise RuntimeError("policy iteration did not converge")


def value_iteration(task, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal ``(Q*, V*)`` of ``task`` at discount ``gamma``, in the task's internal order.

    Named for what it returns; it runs policy iteration with exact solves (see module doc).
    """
    _check_gamma(gamma)
    lo, hi = row_windows(task.transition)
    exp_reward = expected_rewards(task.transition, task.reward, lo, hi)
    init = np.full(task.transition.shape[0], -1, dtype=np.int64)
    q = optimal_q(task.transition, exp_reward, float(gamma), lo, hi, init)
    return q, q.max(axis=1)


def policy_evaluation(task, policy: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """``(Q_pi, V_pi)`` of a stochastic policy ``policy[s, a]`` (internal state order)."""
    _check_gamma(gamma)
    policy = np.asarray(policy, dtype=np.float64)
    if policy.shape != task.transition.shape[:2]:
        raise ValueError(f"policy has shape {policy.shape}, expected {task.transition.shape[:2]}")
    if np.any(policy < 0) or not np.allclose(policy.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("policy rows must be probability distributions over actions")
    lo, hi = row_windows(task.transition)
    exp_reward = expected_rewards(task.transition, task.reward, lo, hi)
    q = evaluate_policy(task.transition, exp_reward, np.ascontiguousarray(policy), float(gamma), lo, hi)
    return q, (q * policy).sum(axis=1)


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
