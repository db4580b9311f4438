"""Sampled tasks against the statistics the spec pins down (spec section 1), and xenoverse's own checks.

Tolerances are about 4 standard errors of the quantity over the draws made here.
"""

import numpy as np
import pytest

from anymdp_gym import sample_task, value_iteration
from anymdp_gym.sampling import ADVANTAGE_MIN, ENTROPY_MIN, GINI_MIN, _sample_structure, episode_length_range, quality

N_ACTIONS = 5


def reaches(n):
    """Default forward and backward reach maxima (spec 1.4, current package)."""
    return max(2, n // 4 + 1), max(2, n // 2 + 1)


def structures(n, count, seed):
    rng = np.random.default_rng(seed)
    forward, backward = reaches(n)
    return [_sample_structure(rng, n, N_ACTIONS, 1, forward, 1, backward) for _ in range(count)]


def spec_pitfalls(rng, n):
    """Pitfall indicators of spec 1.3, written from its text."""
    p = max(rng.uniform(-0.2, 0.4), 0.0)
    while True:
        pits = rng.random(n) < p
        if pits.sum() < n * p + 1:
            return pits


@pytest.mark.parametrize("n", [16, 32])
def test_structure_statistics_before_filtering(n):
    draws = structures(n, 3000, seed=n)
    goal = np.array([d[3] for d in draws])
    assert abs(goal.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(draws))
    # pitfalls among the states that are never starts nor the goal, against the spec's own rule
    middle = slice(3, n - 1)
    ours = np.array([d[2][middle].mean() for d in draws])
    rng = np.random.default_rng(0)
    spec = np.array([spec_pitfalls(rng, n)[middle].mean() for _ in range(len(draws))])
    tol = 4 * np.sqrt(ours.var() / len(ours) + spec.var() / len(spec))
    assert abs(ours.mean() - spec.mean()) < tol
    assert abs((ours == 0).mean() - (spec == 0).mean()) < 4 * np.sqrt(0.25 * 2 / len(draws))
    assert (ours == 0).mean() > 1 / 3 - 0.05  # p = 0 with probability 1/3
    for starts, probs, terminal, goal_terminates, transition in draws:
        assert set(starts.tolist()) <= {0, 1, 2} and abs(probs.sum() - 1) < 1e-12 and not terminal[starts].any()
        assert terminal[n - 1] == goal_terminates
        assert terminal[: n - 1].sum() < 0.4 * n + 1  # the redraw keeps the count below S * p + 1


@pytest.mark.parametrize("n", [16, 32, 64])
def test_band_within_the_reach_limits(n):
    forward, backward = reaches(n)
    for starts, probs, terminal, goal_terminates, transition in structures(n, 200, seed=100 + n):
        for s in range(n):
            rows = transition[s]
            if terminal[s]:
                assert not rows.any()
                continue
            np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-12)
            support = np.flatnonzero(rows.any(axis=0))
            lo_f = max(0, s - backward)
            assert lo_f <= support[0] < max(0, s - 1, lo_f + 1)
            if s == n - 1:
                assert rows[:, s].sum() == 0 and support[-1] < s  # no self-loop on the last state
                continue
            # the window ends at its drawn end (< s + forward) or, if later, where it first holds
            # two non-terminal states ahead of s
            ahead = np.cumsum(~terminal[s + 1 :])
            two_ahead = s + 2 + int(np.argmax(ahead >= 2)) if (ahead >= 2).any() else n
            end = support[-1] + 1
            assert s + 1 < end and min(two_ahead, n) <= end <= max(min(n, s + forward) - 1, two_ahead)


def accepted_tasks():
    return [sample_task(16, seed=i) for i in range(150)] + [sample_task(32, seed=1000 + i) for i in range(60)]


@pytest.fixture(scope="module")
def tasks():
    return accepted_tasks()


def test_accepted_tasks_pass_the_filter_and_ascend(tasks):
    for task in tasks:
        n = task.n_active
        assert set(task.start_states.tolist()) <= {0, 1, 2}
        lo, hi = episode_length_range(n)
        assert lo <= task.max_steps <= np.ceil(hi)
        # the filter saw the float max_steps; its stored ceiling can only raise the advantage
        advantage, gini, entropy = quality(task.transition, task.reward, task.start_states, task.start_probs,
                                           task.terminal, float(task.max_steps))
        assert advantage >= ADVANTAGE_MIN
        assert gini > GINI_MIN and entropy > ENTROPY_MIN
        # value ascends: the last valid state is >= 2 above the best start at gamma 0.99
        _, v = value_iteration(task, 0.99)
        last_valid = n - 2 if task.goal_terminates else n - 1
        assert v[last_valid] >= v[task.start_states].max() + 2.0 - 1e-9


def test_xenoverse_accepts_our_tasks(tasks):
    solver = pytest.importorskip("xenoverse.anymdp.solver")
    from xenoverse.anymdp import AnyMDPEnv

    subset = tasks[:25] + tasks[150:160]
    accepted = 0
    for task in subset:
        d = task.to_xenoverse()
        accepted += bool(solver.check_valuefunction(d))
        env = AnyMDPEnv(max_steps=task.max_steps)
        env.set_task(d)
        obs, _ = env.reset()
        assert obs in set(task.state_mapping[task.start_states].tolist())
        env.step(0)
    # its value iteration stops short of the fixed point, so borderline tasks may flip
    assert accepted >= 0.8 * len(subset)
