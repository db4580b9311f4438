"""Reference solvers: update kernels against plain Python, oracle against planning, learning."""

import numpy as np
import pytest

from anymdp_gym import add_emission, policy_evaluation, sample_task, value_iteration
from anymdp_gym.dynamics import compile_tasks, reset_env, step_env
from anymdp_gym.random_stream import seed_streams
from anymdp_gym.solvers import (
    CountModel,
    EpsilonGreedySolver,
    ModelBasedSolver,
    OracleSolver,
    QLearningSolver,
    RandomSolver,
    ThompsonSolver,
    UCB1Solver,
    model_plan,
    model_update,
    q_learning_update,
)


def test_q_learning_update_matches_python():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 3))
    expected = q.copy()
    for _ in range(200):
        s, a, s2 = rng.integers(6), rng.integers(3), rng.integers(6)
        r, terminated = rng.normal(), bool(rng.random() < 0.2)
        target = r if terminated else r + 0.9 * max(expected[s2])
        expected[s][a] = expected[s][a] + 0.3 * (target - expected[s][a])
        q_learning_update(q, s, a, r, s2, terminated, 0.3, 0.9)
    np.testing.assert_allclose(q, expected, rtol=0, atol=1e-12)


def python_plan(counts, rewards, terminal, r_max, gamma, c, sweeps, order):
    """Optimistic Gauss-Seidel sweeps written out on lists of observed rewards."""
    untried = r_max / (1 - gamma)
    v, greedy = np.zeros(len(order)), {}
    for _ in range(sweeps):
        for s in order:
            if s in terminal:
                v[s] = 0.0
                continue
            qs = []
            for a in range(counts.shape[1]):
                n = counts[s, a].sum()
                if n == 0:
                    qs.append(untried)
                else:
                    expect = sum(counts[s, a, j] * v[j] for j in range(len(v)))
                    qs.append((sum(rewards[(s, a)]) + gamma * expect) / n + c / (1 - gamma) / np.sqrt(n))
            v[s], greedy[s] = max(qs), int(np.argmax(qs))
    return v, greedy


def test_model_update_and_plan_match_python_in_dense_and_banded_layouts():
    rng = np.random.default_rng(1)
    n, n_actions, band = 9, 3, 3
    lo = np.repeat(np.maximum(np.arange(n) - band, 0)[:, None], n_actions, axis=1).astype(np.int32)
    dense, banded = CountModel.empty(n, n_actions, n), CountModel.empty(n, n_actions, 2 * band + 1, lo)
    counts = np.zeros((n, n_actions, n))
    rewards = {(s, a): [] for s in range(n) for a in range(n_actions)}
    terminal = set()
    for _ in range(300):
        s, a = rng.integers(n - 1), rng.integers(n_actions - 1)  # the last action stays untried
        s2 = int(np.clip(s + rng.integers(-band, band + 1), 0, n - 1))
        r, terminated = rng.normal(), s2 == n - 1
        for m in (dense, banded):
            model_update(m.counts, m.n_sa, m.r_sum, m.seen_lo, m.seen_hi, m.terminal_seen, m.r_max,
                         s, a, s2 - m.lo[s, a], s2, r, terminated)
        counts[s, a, s2] += 1
        rewards[(s, a)].append(r)
        terminal |= {s2} if terminated else set()
    np.testing.assert_array_equal(dense.counts, counts)
    np.testing.assert_array_equal(dense.n_sa, counts.sum(axis=2))
    assert dense.terminal_seen.tolist() == [s in terminal for s in range(n)]
    r_max = max(max(v) for v in rewards.values() if v)
    assert dense.r_max[0] == r_max
    order = rng.permutation(n)
    for m in (dense, banded):
        model_plan(m, order, 0.9, 0.05, 4)
    (v_dense, g_dense), (v_band, g_band) = (dense.values, dense.greedy), (banded.values, banded.greedy)
    v_ref, g_ref = python_plan(counts, rewards, terminal, r_max, 0.9, 0.05, 4, order)
    np.testing.assert_allclose(v_dense, v_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v_band, v_ref, rtol=1e-12, atol=1e-12)
    live = [s for s in range(n) if s not in terminal]
    np.testing.assert_array_equal(g_dense[live], [g_ref[s] for s in live])
    np.testing.assert_array_equal(g_band[live], [g_ref[s] for s in live])


def test_oracle_matches_planning_through_the_observation_map():
    task = sample_task(24, seed=3, min_states=12)
    oracle = OracleSolver(task, 0.93)
    q, _ = value_iteration(task, 0.93)
    np.testing.assert_array_equal(oracle.q, q)
    for s, obs in enumerate(task.state_mapping):
        assert oracle.act(int(obs)) == oracle.act_state(s) == int(np.argmax(q[s]))


def test_oracle_in_a_pomdp_maximises_posterior_q():
    task = add_emission(sample_task(16, seed=4), seed=5)
    oracle = OracleSolver(task, 0.5)
    q, _ = value_iteration(task, 0.5)
    for obs in range(task.n_obs):
        posterior = task.emission[:, obs] / max(task.emission[:, obs].sum(), 1e-300)
        assert oracle.act(obs) == int(np.argmax(posterior @ q))


def play(task, solver, steps, seed):
    """Run ``solver`` for ``steps`` steps on ``task``; returns its finished episodes' returns."""
    tables = compile_tasks([task])
    rng = seed_streams(np.random.default_rng(seed), 1)
    s, obs = reset_env(tables, 0, rng)
    returns, ret, t = [], 0.0, 0
    for _ in range(steps):
        a = solver.act(int(obs))
        s, next_obs, r, _, terminated = step_env(tables, 0, s, a, rng)
        t, ret = t + 1, ret + r
        truncated = not terminated and t >= task.max_steps
        solver.update(int(obs), a, r, int(next_obs), bool(terminated), truncated)
        obs = next_obs
        if terminated or truncated:
            s, obs = reset_env(tables, 0, rng)
            returns.append(ret)
            ret, t = 0.0, 0
    return returns


def greedy_score(task, greedy_by_obs, gamma=0.99):
    """Exact value of a greedy policy from the start states: random = 0, optimal = 1."""
    policy = np.zeros((task.n_active, task.n_actions))
    policy[np.arange(task.n_active), greedy_by_obs[task.state_mapping]] = 1.0
    uniform = np.full(policy.shape, 1.0 / task.n_actions)
    value = {name: policy_evaluation(task, p, gamma)[1] for name, p in (("greedy", policy), ("random", uniform))}
    value["optimal"] = value_iteration(task, gamma)[1]
    start = {name: v[task.start_states] @ task.start_probs for name, v in value.items()}
    return (start["greedy"] - start["random"]) / (start["optimal"] - start["random"])


def test_learners_beat_random_on_small_tasks():
    """After 20k steps the learned greedy policies are far better than random in exact value
    (random = 0, optimal = 1), and their late episodes return more than random ones."""
    for seed in range(3):
        task = sample_task(16, seed=seed)
        q = QLearningSolver(16, 5, alpha=0.1, gamma=0.99, seed=seed)
        m = ModelBasedSolver(16, 5, gamma=0.99, seed=seed)
        random_returns = play(task, RandomSolver(5, seed=seed), 20_000, seed)
        for solver in (q, m):
            assert np.mean(play(task, solver, 20_000, seed)[-20:]) > np.mean(random_returns)
        assert greedy_score(task, q.q.argmax(axis=1)) > 0.15
        assert greedy_score(task, m.model.greedy) > 0.8


def test_solvers_are_seeded():
    task = sample_task(16, seed=0)
    for make in (lambda: RandomSolver(5, seed=9), lambda: QLearningSolver(16, 5, seed=9),
                 lambda: ModelBasedSolver(16, 5, seed=9)):
        assert play(task, make(), 3000, 1) == play(task, make(), 3000, 1)


def test_noise_decays_by_half_life():
    solver = QLearningSolver(4, 2, noise=0.8, noise_halflife=100, seed=0)
    for _ in range(100):
        solver.act(0)
    assert solver.eps == pytest.approx(0.4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomSolver(1),
        lambda: QLearningSolver(4, 2, alpha=0.0),
        lambda: QLearningSolver(4, 2, gamma=1.0),
        lambda: QLearningSolver(4, 2, noise=1.5),
        lambda: QLearningSolver(4, 2, noise_halflife=0),
        lambda: ModelBasedSolver(4, 2, sweeps=0),
    ],
)
def test_bad_solver_arguments(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("name", ["epsilon_greedy", "ucb1", "thompson"])
def test_bandit_solvers_try_every_arm_then_exploit(name):
    cls = {"epsilon_greedy": EpsilonGreedySolver, "ucb1": UCB1Solver, "thompson": ThompsonSolver}[name]
    means = np.array([0.3, 0.9, 0.5, 0.1, 0.6])
    rng = np.random.default_rng(0)
    solver, pulls = cls(1, 5, seed=0), []
    for _ in range(400):
        a = solver.act(0)
        pulls.append(a)
        solver.update(0, a, means[a] + 0.1 * rng.normal(), 0, True)
    assert pulls[:5] == [0, 1, 2, 3, 4]  # untried arms first, lowest index first
    assert np.mean(np.array(pulls[200:]) == 1) > 0.85
    # Same seed, same pulls.
    again = cls(1, 5, seed=0)
    rng = np.random.default_rng(0)
    for a in pulls[:50]:
        assert again.act(0) == a
        again.update(0, a, means[a] + 0.1 * rng.normal(), 0, True)


def test_epsilon_greedy_rejects_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        EpsilonGreedySolver(1, 5, eps=1.5)
