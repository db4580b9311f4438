"""Task samplers: AnyMDP (banded, ergodic, composite reward, quality-filtered), GARNET, bandit,
contextual bandit.

Every random number comes from the ``numpy.random.Generator`` passed in (Numba drives the same
generator inside compiled code), so a seed fixes the task bitwise, in any process.

The AnyMDP sampler follows ``shared/docs/anymdp-omnirl-spec.md`` section 1, which describes
the current reference package (``xenoverse`` 0.1.14.0). Decisions where we differ on purpose:

* Planning inside the sampler is exact policy iteration (``planning.py``), not damped value
  iteration stopped at an RMS change of 1e-4; the reward adjustment and the quality filter
  therefore test the true values.
* ``max_steps`` is drawn as the reference's float, used as such in the filter, and stored as
  ``ceil(max_steps)``: the number of steps after which the reference truncates.
* A sampler that keeps rejecting raises after ``max_attempts`` instead of looping forever.
* Step 5 can leave an action with no mass on any target (with a narrow width, every target it
  has some affinity to goes to a nearer action), so its row is 0 / 0. Such a draft is rejected,
  at the point where the quality filter judges it. The filter alone let one such task through
  (data seed 0, sequence 11920 at ``S = 16``: 1 task in 30,000), and that stopped a training run;
  rejecting at that point rather than earlier leaves every other task bit for bit as before
  (measured over 30,000 tasks at ``S = 16`` and 5,000 at ``S = 32``).

Band reaches: the defaults (``min_forward=1, min_backward=1``, maxima ``S//4 + 1`` and
``S//2 + 1``) are the current package's. The version that produced the paper's data (spring
2025) used ``min_forward=2, min_backward=4`` (maxima then ``max(3, S//4+1)``, ``max(5, S//2+1)``).
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
from numba import njit

from anymdp_gym.planning import evaluate_policy, expected_rewards, optimal_q, row_windows
from anymdp_gym.task import Task

SeedLike = Union[None, int, np.random.Generator]

_EPS = 1e-10
_ADJUST_GAMMA = 0.99
_ADJUST_ROUNDS = 5
_START_RANGE = 3
GINI_MIN = 0.70
ENTROPY_MIN = 0.35
ADVANTAGE_MIN = 2.0


def as_generator(seed: SeedLike) -> np.random.Generator:
    """A ``Generator`` from a seed, or the generator itself (drawn from, not copied)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def episode_length_range(n_states: int) -> tuple[float, float]:
    """Bounds of the uniform draw of ``max_steps`` (spec 1.1)."""
    lo = max(4.0 * n_states, 100.0)
    return lo, max(min(8.0 * n_states, 500.0), lo + 1.0)


def check_sizes(n_states: int, n_actions: int, min_states: Optional[int] = None) -> None:
    """One-line errors for sizes the samplers cannot serve."""
    if not isinstance(n_states, (int, np.integer)) or not (n_states >= 8 or n_states == 1):
        raise ValueError(f"n_states must be an integer >= 8 (or 1 for a bandit), got {n_states!r}")
    if not isinstance(n_actions, (int, np.integer)) or n_actions < 2:
        raise ValueError(f"n_actions must be an integer >= 2, got {n_actions!r}")
    if min_states is not None and not (8 <= min_states <= n_states):
        raise ValueError(f"min_states must be in [8, n_states={n_states}], got {min_states!r}")


# --------------------------------------------------------------------------- transitions
@njit(cache=True)
def _sample_structure(rng, n, n_actions, min_fwd, max_fwd, min_back, max_back):
    """Start states, terminal states and the banded, action-split transition (spec 1.2-1.5)."""
    weights = np.zeros(_START_RANGE)
    while weights.sum() < _EPS:
        for i in range(_START_RANGE):
            weights[i] = max(rng.normal(), 0.0)
    starts = np.flatnonzero(weights > _EPS)
    start_probs = weights[starts] / weights[starts].sum()

    pit_prob = max(rng.uniform(-0.2, 0.4), 0.0)
    terminal = np.zeros(n, dtype=np.bool_)
    while True:
        count = 0
        for s in range(n):
            terminal[s] = rng.random() < pit_prob
            count += terminal[s]
        if count < n * pit_prob + 1:
            break
    terminal[starts] = False
    goal_terminates = rng.random() < 0.3
    terminal[n - 1] = goal_terminates

    kernel = np.zeros((n, n))
    win_from = np.zeros(n, dtype=np.int64)
    win_to = np.zeros(n, dtype=np.int64)
    for s in range(n):
        if terminal[s]:
            continue
        lo_f = max(0, s - max_back)
        hi_f = max(0, s - min_back, lo_f + 1)
        hi_t = min(n, s + max_fwd)
        lo_t = min(n - 1, s + min_fwd, hi_t - 1)
        s_from = rng.integers(lo_f, hi_f)
        s_to = rng.integers(lo_t, hi_t)
        while s_to < n:  # at least two non-terminal states ahead of s
            ahead = 0
            for j in range(s + 1, s_to):
                ahead += not terminal[j]
            if ahead > 1:
                break
            s_to += 1
        win_from[s], win_to[s] = s_from, s_to
        for j in range(s_from, s_to):
            kernel[s, j] = min(max(rng.normal(), 0.1), 1.0)
        kernel[s, s] = 0.0 if s == n - 1 else kernel[s, s] / 2.0
        kernel[s] /= kernel[s].sum()

    transition = np.zeros((n, n_actions, n))
    for s in range(n):
        if terminal[s]:
            continue
        f, t = win_from[s], win_to[s]
        centres = np.empty(n_actions)
        for a in range(n_actions):
            centres[a] = rng.uniform(f - 1, t)
        sigma = min(max(rng.exponential(1.0), 0.2), 1.6)
        for j in range(f, t):
            affinity = np.exp(-((centres - j) ** 2) / sigma**2)
            total = affinity.sum()
            if total < _EPS:  # nobody points here: the nearest action takes it
                affinity[:] = 0.0
                affinity[np.argmin((centres - j) ** 2)] = 1.0
                total = 1.0
            for a in range(n_actions):
                transition[s, a, j] = affinity[a] / total * kernel[s, j]
        for a in range(n_actions):
            transition[s, a] /= transition[s, a].sum()
    return starts, start_probs, terminal, goal_terminates, transition


# --------------------------------------------------------------------------- rewards
@njit(cache=True)
def _potential(rng, n):
    """Smooth random potential phi(i): a few Fourier terms, amplitude up to 5 (spec 1.6)."""
    phi = np.zeros(n)
    if rng.random() < 0.5:
        return phi
    base = min(max(rng.exponential(1.0), 0.2), 5.0)
    box = max(rng.uniform(-base, base), 0.0)
    if box == 0.0:
        return phi
    n_items = rng.integers(1, 4)
    scale = box / np.sqrt(n_items)
    for item in range(n_items + 1):
        order = 0.0 if item == 0 else rng.integers(1, 6) + rng.normal()
        a = rng.normal() * rng.exponential(scale)
        b = rng.normal() * rng.exponential(scale)
        for s in range(n):
            x = s / (2.0 * n)
            phi[s] += a * np.sin(order * x) + b * np.cos(order * x)
    return phi


@njit(cache=True)
def _raw_reward(rng, n, n_actions, terminal, goal_terminates):
    """Potential + position + state-action + step reward and its noise (spec 1.6)."""
    phi = _potential(rng, n)

    base = rng.exponential(0.2)
    increments = np.empty(n)
    for s in range(n):
        increments[s] = max(rng.normal(), 0.0)
    increments[n - 1] += 0.2
    position = np.cumsum(increments * base)
    position -= rng.uniform(0.1 * position[-1], 0.9 * position[-1])
    position_noise = np.empty(n)
    for s in range(n):
        position_noise[s] = max(rng.uniform(-0.3, 0.3), 0.0) * base
    position[terminal] = 0.0
    position_noise[terminal] = 0.0

    cost = min(max(rng.exponential(0.05), 0.0), 0.1)
    sa_reward = np.zeros((n, n_actions))
    sa_noise = np.zeros((n, n_actions))
    for s in range(n):
        for a in range(n_actions):
            if rng.uniform(-0.7, 0.3) > 0.0:
                sa_reward[s, a] = cost * rng.normal()
                sa_noise[s, a] = 0.3 * cost * max(rng.normal(), 0.0)

    has_pitfall = terminal[: n - 1].any()
    if goal_terminates:
        step = min(rng.normal(), 0.0) * 0.01
    elif has_pitfall:
        step = max(rng.normal(), 0.0) * 0.01
    else:
        step = 0.0

    reward = np.empty((n, n_actions, n))
    noise = np.empty((n, n_actions, n))
    for s in range(n):
        for a in range(n_actions):
            for j in range(n):
                reward[s, a, j] = phi[s] - phi[j] + position[j] + sa_reward[s, a] + step
                noise[s, a, j] = position_noise[j] + sa_noise[s, a]
    return reward, noise


@njit(cache=True)
def _terminal_rewards(rng, transition, raw_reward, starts, terminal, goal_terminates, lo, hi):
    """Arrival rewards that make values ascend to the goal, pitfalls the worst (spec 1.6).

    Returns ``(ok, terminal_reward)``; ``ok`` is False when 5 rounds do not suffice.
    """
    n = transition.shape[0]
    term = np.zeros(n)
    term[n - 1] = 1.0
    last_valid = n - 2 if goal_terminates else n - 1
    pitfalls = terminal.copy()
    pitfalls[n - 1] = False
    actions = np.full(n, -1, dtype=np.int64)
    reward = np.empty_like(raw_reward)
    for _ in range(_ADJUST_ROUNDS):
        for j in range(n):
            reward[:, :, j] = raw_reward[:, :, j] + term[j]
        exp_reward = expected_rewards(transition, reward, lo, hi)
        q = optimal_q(transition, exp_reward, _ADJUST_GAMMA, lo, hi, actions)
        for s in range(n):
            actions[s] = np.argmax(q[s])
        v = np.empty(n)
        lowest_safe = np.inf
        for s in range(n):
            v[s] = q[s].max()
            if not terminal[s]:
                lowest_safe = min(lowest_safe, v[s])
        best_start = -np.inf
        for s in starts:
            best_start = max(best_start, v[s])
        pit_gap = term.min() - lowest_safe + 1.0
        goal_gap = best_start - v[last_valid] + rng.uniform(2.0, 5.0)
        if pit_gap <= 0.0 and goal_gap <= 0.0:
            return True, term
        if pit_gap > 0.0:
            term[pitfalls] -= pit_gap + rng.uniform(1.0, 10.0)
        if goal_gap > 0.0:
            raise_by = max(2.0 * goal_gap, rng.uniform(1.0, 10.0))
            term[n - 1] += raise_by if goal_terminates else (1.0 - _ADJUST_GAMMA) * raise_by
    return False, term


# --------------------------------------------------------------------------- quality filter
@njit(cache=True)
def _square(m):
    n = m.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for k in range(n):
            x = m[i, k]
            if x != 0.0:
                for j in range(n):
                    out[i, j] += x * m[k, j]
    return out


@njit(cache=True)
def quality(transition, reward, starts, start_probs, terminal, max_steps):
    """The filter's statistics ``(advantage, gini, entropy)``, each the minimum over starts.

    ``advantage = (max Q* - max Q_rand) * (1 - gamma) * max_steps`` at ``gamma = 2**(-1/n)``;
    ``gini`` and ``entropy`` (normalised by ``log n``) describe the state distribution after
    ``2**K`` steps of the greedy optimal policy, terminal states jumping back to the start
    distribution, ``K = int(log2(max_steps)) + 1`` (spec 1.7).
    """
    n, n_actions, _ = transition.shape
    gamma = 2.0 ** (-1.0 / n)
    lo, hi = row_windows(transition)
    exp_reward = expected_rewards(transition, reward, lo, hi)
    q_opt = optimal_q(transition, exp_reward, gamma, lo, hi, np.full(n, -1, dtype=np.int64))
    q_rnd = evaluate_policy(transition, exp_reward, np.full((n, n_actions), 1.0 / n_actions), gamma, lo, hi)
    advantage = np.inf
    for s in starts:
        advantage = min(advantage, (q_opt[s].max() - q_rnd[s].max()) * (1.0 - gamma) * max_steps)

    chain = np.zeros((n, n))
    for s in range(n):
        if terminal[s]:
            for i in range(starts.size):
                chain[s, starts[i]] = start_probs[i]
        else:
            chain[s] = transition[s, np.argmax(q_opt[s])]
    for _ in range(int(np.log2(max_steps)) + 1):
        chain = _square(chain)
    gini, entropy = np.inf, np.inf
    for s in starts:
        p = chain[s] + 1e-12
        gini = min(gini, 1.0 - (p * p).sum())
        entropy = min(entropy, -(p * np.log(p)).sum() / np.log(n))
    return advantage, gini, entropy


@njit(cache=True)
def _sample_anymdp(rng, n, n_actions, max_steps, min_fwd, max_fwd, min_back, max_back, max_attempts):
    for attempt in range(1, max_attempts + 1):
        starts, start_probs, terminal, goal_terminates, transition = _sample_structure(
            rng, n, n_actions, min_fwd, max_fwd, min_back, max_back
        )
        raw_reward, noise = _raw_reward(rng, n, n_actions, terminal, goal_terminates)
        lo, hi = row_windows(transition)
        ok, term = _terminal_rewards(rng, transition, raw_reward, starts, terminal, goal_terminates, lo, hi)
        if not ok:
            continue
        reward = raw_reward.copy()
        for j in range(n):
            reward[:, :, j] += term[j]
        advantage, gini, entropy = quality(transition, reward, starts, start_probs, terminal, max_steps)
        finite = np.all(np.isfinite(transition))  # checked here, where a draft is judged (module doc)
        if finite and advantage >= ADVANTAGE_MIN and gini > GINI_MIN and entropy > ENTROPY_MIN:
            return attempt, starts, start_probs, terminal, goal_terminates, transition, reward, noise
    return None


# --------------------------------------------------------------------------- public samplers
def _draw_common(rng: np.random.Generator, n_states: int, min_states: Optional[int]):
    """``max_steps`` (as the reference's float) and the active-state observation ids."""
    lo, hi = episode_length_range(n_states)
    max_steps = rng.uniform(lo, hi)
    n_active = n_states if min_states is None else int(rng.integers(min_states, n_states + 1))
    return max_steps, rng.permutation(n_states)[:n_active]


def sample_task(
    n_states: int,
    n_actions: int = 5,
    *,
    seed: SeedLike = None,
    min_states: Optional[int] = None,
    min_forward: int = 1,
    min_backward: int = 1,
    max_forward: Optional[int] = None,
    max_backward: Optional[int] = None,
    max_attempts: int = 10_000,
) -> Task:
    """Sample one AnyMDP task (spec section 1), resampling until it passes the quality filter.

    Args:
        n_states: observation ids of states, >= 8, or 1 for a multi-armed bandit.
        n_actions: actions, >= 2.
        seed: an int, a ``Generator`` (advanced in place), or None for fresh entropy.
        min_states: if given, only ``randint(min_states, n_states + 1)`` states are active,
            at random observation ids among ``n_states``.
        min_forward, min_backward, max_forward, max_backward: band reaches (module doc).
        max_attempts: rejected drafts tolerated before ``RuntimeError``.
    """
    check_sizes(n_states, n_actions, min_states)
    rng = as_generator(seed)
    if n_states == 1:
        return _sample_contextual_bandit(rng, 1, n_actions, "anymdp")  # spec 1.10: one context
    if min(min_forward, min_backward) < 1:
        raise ValueError("band reaches must be >= 1")
    max_steps, mapping = _draw_common(rng, n_states, min_states)
    n = mapping.size
    max_fwd = max(min_forward + 1, n // 4 + 1 if max_forward is None else max_forward)
    max_back = max(min_backward + 1, n // 2 + 1 if max_backward is None else max_backward)
    drawn = _sample_anymdp(rng, n, n_actions, max_steps, min_forward, max_fwd, min_backward, max_back, max_attempts)
    if drawn is None:
        raise RuntimeError(f"no task passed the quality filter in {max_attempts} attempts")
    _, starts, start_probs, terminal, goal, transition, reward, noise = drawn
    return Task(
        n_states=n_states,
        transition=transition,
        reward=reward,
        reward_noise=noise,
        start_states=starts,
        start_probs=start_probs,
        terminal=terminal,
        goal_terminates=goal,
        max_steps=int(np.ceil(max_steps)),
        state_mapping=mapping,
    )


CBANDIT_REWARDS = ("anymdp", "gaussian")


def sample_contextual_bandit(n_contexts: int, n_actions: int = 5, *, seed: SeedLike = None,
                             rewards: str = "anymdp") -> Task:
    """A contextual bandit: each pull is a one-step episode (``Task.one_step``) in a context drawn
    uniformly and independently of everything before it; ``n_contexts = 1`` is AnyMDP's bandit.

    The rung between bandits and MDPs (``configs/ladder/cbandit-8.yaml``): the best action depends
    on the observation, so a learner must average rewards per (context, action), but nothing it
    does changes what it sees next. Stored as an MDP whose transition is uniform over contexts for
    every action (so any discount's greedy action is the best mean reward) and whose start
    distribution is uniform.

    Args:
        n_contexts: observation ids, >= 1.
        rewards: ``"anymdp"``: the bandit scheme of spec 1.10 in every context with one task-wide
            scale (base ``clip(Exponential(1), 0.05, 2)``, means ``Uniform(base / 2, base)`` per
            (context, arm), redrawn until a context's arms differ by a std > 0.01; noise std
            ``max(Uniform(-0.3, 0.3), 0)`` times the mean). ``"gaussian"``: unit-scale means
            ``Normal(0, 1)`` and noise std ``Uniform(0, 1)`` per task, the simplest problem of the
            kind (issue 23's first probes).
    """
    if not isinstance(n_contexts, (int, np.integer)) or n_contexts < 1:
        raise ValueError(f"n_contexts must be an integer >= 1, got {n_contexts!r}")
    if not isinstance(n_actions, (int, np.integer)) or n_actions < 2:
        raise ValueError(f"n_actions must be an integer >= 2, got {n_actions!r}")
    if rewards not in CBANDIT_REWARDS:
        raise ValueError(f"rewards must be one of {CBANDIT_REWARDS}, got {rewards!r}")
    return _sample_contextual_bandit(as_generator(seed), int(n_contexts), int(n_actions), rewards)


def _sample_contextual_bandit(rng: np.random.Generator, n: int, n_actions: int, rewards: str) -> Task:
    if rewards == "anymdp":
        base = np.clip(rng.exponential(1.0), 0.05, 2.0)
        noise_scale = max(rng.uniform(-0.3, 0.3), 0.0)
        means = np.empty((n, n_actions))
        for s in range(n):
            while True:
                means[s] = rng.uniform(0.5 * base, base, size=n_actions)
                if means[s].std() > 0.01:
                    break
        noise = noise_scale * means
    else:
        means = rng.normal(size=(n, n_actions))
        noise = np.full_like(means, rng.uniform(0.0, 1.0))
    spread = np.ones((1, 1, n))
    return Task(
        n_states=n,
        transition=np.full((n, n_actions, n), 1.0 / n),
        reward=means[:, :, None] * spread,
        reward_noise=noise[:, :, None] * spread,
        start_states=np.arange(n),
        start_probs=np.full(n, 1.0 / n),
        terminal=np.zeros(n, dtype=bool),
        goal_terminates=False,
        max_steps=1,
        state_mapping=np.arange(n),
    )


def sample_garnet_task(
    n_states: int,
    n_actions: int = 5,
    *,
    seed: SeedLike = None,
    min_states: Optional[int] = None,
    branching: int = 2,
    reward_std: float = 0.1,
    reward_mean: float = 0.0,
) -> Task:
    """A GARNET task (spec 1.10): each ``(s, a)`` reaches ``branching`` random states with
    random-partition probabilities; Gaussian mean rewards, no noise, start state 0, no terminals.
    """
    check_sizes(n_states, n_actions, min_states)
    if n_states == 1:
        raise ValueError("GARNET tasks need n_states >= 8")
    rng = as_generator(seed)
    max_steps, mapping = _draw_common(rng, n_states, min_states)
    n = mapping.size
    if not 1 <= branching <= n:
        raise ValueError(f"branching must be in [1, {n}], got {branching}")
    transition = np.zeros((n, n_actions, n))
    for s in range(n):
        for a in range(n_actions):
            targets = rng.choice(n, size=branching, replace=False)
            cuts = np.concatenate(([0.0], np.sort(rng.random(branching - 1)), [1.0]))
            transition[s, a, targets] = np.diff(cuts)
    reward = rng.normal(size=(n, n_actions, n)) * reward_std + reward_mean
    return Task(
        n_states=n_states,
        transition=transition,
        reward=reward,
        reward_noise=np.zeros_like(reward),
        start_states=np.array([0]),
        start_probs=np.array([1.0]),
        terminal=np.zeros(n, dtype=bool),
        goal_terminates=False,
        max_steps=int(np.ceil(max_steps)),
        state_mapping=mapping,
    )


def add_emission(task: Task, n_obs: Optional[int] = None, *, seed: SeedLike = None,
                 density: float = 0.2, max_per_row: int = 4) -> Task:
    """Turn ``task`` into a POMDP: each hidden state emits an observation id through a sparse
    random emission matrix (density ``min(density, max_per_row / n_obs)``, spec 1.10).
    """
    n_obs = task.n_states if n_obs is None else n_obs
    if n_obs < 1:
        raise ValueError(f"n_obs must be >= 1, got {n_obs}")
    rng = as_generator(seed)
    n = task.n_active
    density = min(density, max_per_row / n_obs)
    n_entries = int(round(density * n * n_obs))
    emission = np.zeros((n, n_obs))
    cells = rng.choice(n * n_obs, size=n_entries, replace=False)
    emission.flat[cells] = rng.random(n_entries)
    for s in np.flatnonzero(emission.sum(axis=1) == 0):
        emission[s, rng.integers(n_obs)] = 1.0
    emission /= emission.sum(axis=1, keepdims=True)
    return task.replace(task_type="POMDP", emission=emission)
