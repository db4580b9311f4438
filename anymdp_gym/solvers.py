"""Reference solvers for tabular tasks: oracle, Q-learning, model-based RL, random, and the
classic bandit algorithms (epsilon-greedy, UCB1, Gaussian Thompson sampling).

Each solver is a plain class with ``act(obs) -> action`` and
``update(obs, action, reward, next_obs, terminated, truncated=False)``, built from observation
and action counts (the oracle from a ``Task``), so any codebase can drive it step by step.

Why the module-level ``@njit`` kernels: the per-step rules (Q-learning update, model counts,
optimistic planning sweeps, noisy action choice) are written once over plain
arrays. These classes call them on one agent's tables; ``omnirl_jax.data.policies`` calls the
very same kernels on slices of a batch of agents inside the compiled data generator. Randomness
comes from ``anymdp_gym.random_stream`` streams seeded from an explicit seed.

Decisions where the spec is silent:

* Exploration noise is epsilon-greedy with ``eps_t = eps0 * 0.5 ** (t / halflife)`` (``t``
  counts ``act`` calls), a uniformly random action when it fires.
* Q-learning starts from Q = 0 and bootstraps with ``max_a Q(s', a)`` unless ``s'`` is terminal.
* Model-based RL keeps counts ``n(s, a, s')``, ``n(s, a)`` and reward sums; it plans with
  ``sweeps`` Gauss-Seidel value-iteration sweeps, warm-started, whenever an episode ends
  (``terminated`` or ``truncated``), in the order of its state ids (an agent that sees only
  observation ids knows no better order). Optimism: a tried action gets
  ``c / (1 - gamma) / sqrt(n(s, a))`` on top of its estimated one-step reward (the bonus is
  discounted along with the value, so it is "c per step of horizon"); an untried action is
  valued at ``r_max / (1 - gamma)`` with ``r_max`` the largest reward seen so far (R-max with a
  single visit), which drives systematic exploration. States that ended an episode are terminal
  in the model (value 0).
* The bandit algorithms keep per-observation arm statistics (a bandit has one observation; on an
  MDP they are contextual bandits that ignore transitions) and pull every untried arm of an
  observation first, lowest index first. Epsilon-greedy uses a constant ``eps`` (0.1 by default)
  over sample means. UCB1 uses the UCB1-Tuned bonus of Auer et al. (2002),
  ``sqrt(ln n / n_a * min(1/4, V_a))`` with ``V_a`` the arm's sample variance plus
  ``sqrt(2 ln n / n_a)``: AnyMDP rewards are not in [0, 1] and are often noiseless, and plain
  UCB1's bonus, sized for [0, 1] rewards, then explores far too long (measured on ``bandit-5``:
  0.26 normalised return against 0.88 for epsilon-greedy). Thompson sampling is Gaussian with the
  noise variance estimated from the pulls: arm ``a`` is drawn from ``N(mean_a, s^2 / n_a)``, ``s^2``
  the pooled within-arm sample variance (the unit-variance textbook form scored 0.31, for the same
  reason); noiseless tasks make it greedy after one pull of each arm.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from anymdp_gym.random_stream import normal, seed_streams, uniform
from anymdp_gym.planning import value_iteration
from anymdp_gym.task import Task

_LN_HALF = np.log(0.5)


# --------------------------------------------------------------------------- shared kernels
@njit(cache=True, inline="always")
def argmax_row(row):
    """Index of the largest entry (first on ties)."""
    best, best_a = row[0], 0
    for a in range(1, row.shape[0]):
        if row[a] > best:
            best, best_a = row[a], a
    return best_a


@njit(cache=True, inline="always")
def fires(prob, rng, i):
    """True with probability ``prob`` (draws nothing when ``prob <= 0``)."""
    return prob > 0.0 and uniform(rng, i) < prob


@njit(cache=True, inline="always")
def random_action(n_actions, rng, i):
    return int(uniform(rng, i) * n_actions)


@njit(cache=True, inline="always")
def q_learning_update(q, s, a, r, s2, terminated, alpha, gamma):
    """``Q(s, a) += alpha * (r + gamma * max Q(s') - Q(s, a))``; no bootstrap from a terminal."""
    target = r
    if not terminated:
        target += gamma * q[s2, argmax_row(q[s2])]
    q[s, a] += alpha * (target - q[s, a])


class CountModel(NamedTuple):
    """One agent's count model (module doc), what ``model_plan`` plans from. Column ``k`` of row
    ``(s, a)`` is state ``lo[s, a] + k``: ``lo`` is 0 for a dense table, the row's window start for
    a banded one (the generator's layout)."""

    counts: np.ndarray  # int32 [n, A, W] next-state counts
    n_sa: np.ndarray  # int32 [n, A]
    r_sum: np.ndarray  # float64 [n, A]
    seen_lo: np.ndarray  # int32 [n, A] first and one-past-last column seen, so planning visits only those
    seen_hi: np.ndarray  # int32 [n, A]
    terminal_seen: np.ndarray  # bool [n] states that ended an episode
    r_max: np.ndarray  # float64 [1] largest reward seen
    lo: np.ndarray  # int32 [n, A]
    values: np.ndarray  # float64 [n], written by ``model_plan``
    greedy: np.ndarray  # int64 [n] greedy action, written by ``model_plan``

    @classmethod
    def empty(cls, n: int, n_actions: int, width: int, lo=None) -> "CountModel":
        """Nothing counted yet; ``lo`` (default 0: dense rows, ``width == n``) as in the class doc."""
        shape = (n, n_actions)
        return cls(np.zeros(shape + (width,), np.int32), np.zeros(shape, np.int32), np.zeros(shape),
                   np.full(shape, width, np.int32), np.zeros(shape, np.int32), np.zeros(n, np.bool_),
                   np.full(1, -np.inf), np.zeros(shape, np.int32) if lo is None else lo, np.zeros(n),
                   np.zeros(n, np.int64))


@njit(cache=True, inline="always")
def model_update(counts, n_sa, r_sum, seen_lo, seen_hi, terminal_seen, r_max, s, a, k, s2, r, terminated):
    """Record one transition in a count model (a ``CountModel``'s arrays).

    Takes the arrays one by one: read through a ``CountModel`` tuple in the generator's per-step
    loop, it slowed generation from 4.1-4.2 to 3.0-3.9 M steps/s (16 states, measured).

    ``k`` is the column of ``s2`` in row ``(s, a)`` of ``counts``: ``s2`` itself for a dense
    table, its offset inside the row's window for a banded layout. ``seen_lo/seen_hi`` bound the
    columns observed so far, so planning visits only those; ``r_max[0]`` is the largest reward seen.
    """
    counts[s, a, k] += 1
    n_sa[s, a] += 1
    r_sum[s, a] += r
    if k < seen_lo[s, a]:
        seen_lo[s, a] = k
    if k + 1 > seen_hi[s, a]:
        seen_hi[s, a] = k + 1
    if r > r_max[0]:
        r_max[0] = r
    if terminated:
        terminal_seen[s2] = True


@njit(cache=True)
def model_plan(m, order, gamma, c, sweeps):
    """``sweeps`` optimistic Gauss-Seidel value-iteration sweeps over the states in ``order``,
    writing ``m.values`` and the greedy action of every swept state into ``m.greedy`` (module doc:
    bonus, untried actions, terminals)."""
    counts, n_sa, r_sum, seen_lo, seen_hi, terminal_seen, r_max, lo, v, greedy = m
    n_actions = n_sa.shape[1]
    bonus = c / (1.0 - gamma)
    untried = r_max[0] / (1.0 - gamma) if r_max[0] > -np.inf else 0.0
    for _ in range(sweeps):
        for idx in range(order.shape[0]):
            s = order[idx]
            if terminal_seen[s]:
                v[s] = 0.0
                continue
            best, best_a = -np.inf, 0
            for a in range(n_actions):
                n = n_sa[s, a]
                if n == 0:
                    qa = untried
                else:
                    acc = 0.0
                    base = lo[s, a]
                    for k in range(seen_lo[s, a], seen_hi[s, a]):
                        cnt = counts[s, a, k]
                        if cnt != 0:
                            acc += cnt * v[base + k]
                    qa = (r_sum[s, a] + gamma * acc) / n + bonus / np.sqrt(n)
                if qa > best:
                    best, best_a = qa, a
            v[s] = best
            greedy[s] = best_a


@njit(cache=True, inline="always")
def halving_factor(halflife):
    """Per-step multiplier that halves a quantity every ``halflife`` steps (``inf``: constant)."""
    return np.exp(_LN_HALF / halflife)


# --------------------------------------------------------------------------- solvers
class _Seeded:
    """One SplitMix64 stream from an explicit seed, for the compiled kernels."""

    def __init__(self, n_actions: int, seed):
        if n_actions < 2:
            raise ValueError(f"n_actions must be >= 2, got {n_actions}")
        self.n_actions = int(n_actions)
        self._rng = seed_streams(np.random.default_rng(seed), 1)


class _Noisy(_Seeded):
    """Epsilon-greedy noise that halves every ``noise_halflife`` calls of ``act``."""

    def __init__(self, n_actions: int, noise: float, noise_halflife: float, seed):
        super().__init__(n_actions, seed)
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        if not noise_halflife > 0:
            raise ValueError(f"noise_halflife must be > 0, got {noise_halflife}")
        self.eps = float(noise)
        self._decay = float(halving_factor(float(noise_halflife)))

    def _noisy(self, greedy_action: int) -> int:
        explore = fires(self.eps, self._rng, 0)
        self.eps *= self._decay
        return random_action(self.n_actions, self._rng, 0) if explore else int(greedy_action)


class RandomSolver(_Seeded):
    """Uniformly random actions."""

    def __init__(self, n_actions: int, seed=None):
        super().__init__(n_actions, seed)

    def act(self, obs: int) -> int:
        return random_action(self.n_actions, self._rng, 0)

    def update(self, obs, action, reward, next_obs, terminated, truncated=False) -> None:
        """Learns nothing."""


class OracleSolver:
    """Greedy in Q* of ``task`` at discount ``gamma`` (knows the task; learns nothing).

    ``act(obs)`` maps the observation id to the internal state through ``task.state_mapping``.
    In a POMDP an observation does not identify the state: ``act`` then maximises the Q*
    expected under the posterior ``P(s | obs)`` of the emission with a uniform prior over states
    (a one-step QMDP choice, no memory); ``act_state(state)`` is the privileged oracle that the
    data generator labels with.
    """

    def __init__(self, task: Task, gamma: float):
        self.task = task
        self.gamma = float(gamma)
        self.n_actions = task.n_actions
        self.q, _ = value_iteration(task, self.gamma)
        self.state_actions = self.q.argmax(axis=1)
        if task.emission is None:
            q_obs = np.zeros((task.n_states, task.n_actions))
            q_obs[task.state_mapping] = self.q
        else:
            posterior = task.emission / np.maximum(task.emission.sum(axis=0), 1e-300)
            q_obs = posterior.T @ self.q
        self.obs_actions = q_obs.argmax(axis=1)

    def act(self, obs: int) -> int:
        return int(self.obs_actions[obs])

    def act_state(self, state: int) -> int:
        return int(self.state_actions[state])

    def update(self, obs, action, reward, next_obs, terminated, truncated=False) -> None:
        """Knows the task already."""


class QLearningSolver(_Noisy):
    """Tabular Q-learning with a constant step size and decaying epsilon-greedy noise."""

    def __init__(self, n_obs: int, n_actions: int, *, alpha: float = 0.1, gamma: float = 0.99,
                 noise: float = 1.0, noise_halflife: float = 2000.0, seed=None):
        super().__init__(n_actions, noise, noise_halflife, seed)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        self.alpha, self.gamma = float(alpha), float(gamma)
        self.q = np.zeros((int(n_obs), self.n_actions))

    def act(self, obs: int) -> int:
        return self._noisy(argmax_row(self.q[obs]))

    def update(self, obs, action, reward, next_obs, terminated, truncated=False) -> None:
        q_learning_update(self.q, int(obs), int(action), float(reward), int(next_obs), bool(terminated),
                          self.alpha, self.gamma)


class ModelBasedSolver(_Noisy):
    """Count-based model, optimistic value iteration at episode ends, decaying noise."""

    def __init__(self, n_obs: int, n_actions: int, *, gamma: float = 0.99, c: float = 0.005,
                 sweeps: int = 20, noise: float = 0.5, noise_halflife: float = 2000.0, seed=None):
        super().__init__(n_actions, noise, noise_halflife, seed)
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        if sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {sweeps}")
        n = int(n_obs)
        self.gamma, self.c, self.sweeps = float(gamma), float(c), int(sweeps)
        self.model = CountModel.empty(n, self.n_actions, n)
        self._order = np.arange(n)

    def act(self, obs: int) -> int:
        return self._noisy(self.model.greedy[obs])

    def update(self, obs, action, reward, next_obs, terminated, truncated=False) -> None:
        m = self.model
        model_update(m.counts, m.n_sa, m.r_sum, m.seen_lo, m.seen_hi, m.terminal_seen, m.r_max,
                     int(obs), int(action), int(next_obs), int(next_obs), float(reward), bool(terminated))
        if terminated or truncated:
            self.plan()

    def plan(self) -> None:
        """Run ``sweeps`` optimistic value-iteration sweeps on the current model."""
        model_plan(self.model, self._order, self.gamma, self.c, self.sweeps)


class _ArmStatistics(_Seeded):
    """Pull counts and reward sums per observation and arm; untried arms are pulled first."""

    def __init__(self, n_obs: int, n_actions: int, *, seed=None):
        super().__init__(n_actions, seed)
        self.pulls = np.zeros((int(n_obs), self.n_actions), np.int64)
        self.r_sum = np.zeros((int(n_obs), self.n_actions))
        self.r_sq = np.zeros((int(n_obs), self.n_actions))

    def act(self, obs: int) -> int:
        untried = np.flatnonzero(self.pulls[obs] == 0)
        return int(untried[0]) if untried.size else self._choose(int(obs))

    def update(self, obs, action, reward, next_obs, terminated, truncated=False) -> None:
        self.pulls[obs, action] += 1
        self.r_sum[obs, action] += reward
        self.r_sq[obs, action] += reward * reward

    def _means(self, obs: int) -> np.ndarray:
        return self.r_sum[obs] / np.maximum(self.pulls[obs], 1)

    def _square_deviations(self, obs: int) -> np.ndarray:
        """Per arm, the sum of squared deviations from its sample mean."""
        return np.maximum(self.r_sq[obs] - self.r_sum[obs] * self._means(obs), 0.0)


class EpsilonGreedySolver(_ArmStatistics):
    """Greedy in the sample mean reward of each arm, a uniformly random arm with probability ``eps``."""

    def __init__(self, n_obs: int, n_actions: int, *, eps: float = 0.1, seed=None):
        super().__init__(n_obs, n_actions, seed=seed)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {eps}")
        self.eps = float(eps)

    def _choose(self, obs: int) -> int:
        if fires(self.eps, self._rng, 0):
            return random_action(self.n_actions, self._rng, 0)
        return argmax_row(self._means(obs))


class UCB1Solver(_ArmStatistics):
    """Sample mean plus the UCB1-Tuned bonus (module doc), ``n`` the pulls so far in the observation."""

    def _choose(self, obs: int) -> int:
        n = self.pulls[obs]
        log_n = np.log(n.sum())
        variance = self._square_deviations(obs) / n + np.sqrt(2.0 * log_n / n)
        return argmax_row(self._means(obs) + np.sqrt(log_n / n * np.minimum(0.25, variance)))


class ThompsonSolver(_ArmStatistics):
    """Gaussian Thompson sampling with an estimated noise variance: arm ``a`` drawn from
    ``N(mean_a, s^2 / n_a)`` (module doc)."""

    def _choose(self, obs: int) -> int:
        n = self.pulls[obs]
        dof = n.sum() - self.n_actions
        s2 = self._square_deviations(obs).sum() / dof if dof > 0 else 0.0
        draws = np.array([normal(self._rng, 0) for _ in range(self.n_actions)])
        return argmax_row(self._means(obs) + draws * np.sqrt(s2 / n))
