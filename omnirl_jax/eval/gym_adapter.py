"""Gymnasium's discrete toy-text tasks as ``anymdp_gym.Task``s in the model's vocabulary.

Why through ``Task``: FrozenLake, CliffWalking and Taxi publish their full model (``env.P``: per
state and action a list of ``(prob, next_state, reward, terminated)``), so the conversion is
exact, and the converted task then runs through everything AnyMDP tasks run through: the JAX
env inside the model's scan, exact oracle planning, the same baselines and normalisation.

Vocabulary mapping: the env's states get observation ids by a seeded random permutation into
``[0, n_obs)`` (``n_obs`` = the model's observation vocabulary), as AnyMDP does, so the model
cannot lean on the env's id order; each seed is a different relabelling of the same task. The
env's actions keep their ids; a model with more actions has the surplus masked
(``anymdp_gym.jax.dynamics.EnvParams.action_mask``). A task larger than the vocabulary raises ``ValueError``.

Decisions where Gymnasium is silent or differs from ``Task``:

* ``terminated`` is a property of the arrival state (``Task.terminal``): a state is terminal when
  some transition into it terminates, and a table where another transition (from a non-terminal
  state reachable from the start) arrives there without terminating is rejected. Terminal
  states get zero transition rows. States that cannot be reached (Taxi's "already delivered"
  states) keep their rows as listed; they are never played.
* Several outcomes of one ``(s, a)`` landing in the same next state are merged: probabilities
  add, the mean reward is their probability-weighted mean, and the spread of their rewards
  becomes ``reward_noise`` (a Gaussian with the same variance).
* Episode length: the registered ``max_episode_steps``; CliffWalking registers none and gets
  ``DEFAULT_MAX_STEPS``.
"""

from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np

from anymdp_gym.task import Task

DEFAULT_MAX_STEPS = 200

GYM_TASKS: dict[str, tuple[str, dict]] = {
    "FrozenLake-4x4": ("FrozenLake-v1", {"map_name": "4x4"}),
    "FrozenLake-8x8": ("FrozenLake8x8-v1", {}),
    "CliffWalking": ("CliffWalking-v1", {}),
    "Taxi": ("Taxi-v4", {}),
}
"""Short name -> (Gymnasium id, make kwargs) of the discrete tasks in the ``gym`` suite."""


def gym_size(name: str) -> tuple[int, int]:
    """``(n_states, n_actions)`` of a ``GYM_TASKS`` entry."""
    env_id, kwargs = GYM_TASKS[name]
    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    try:
        return int(env.observation_space.n), int(env.action_space.n)
    finally:
        env.close()


def task_from_gym(env_id: str, n_obs: Optional[int] = None, seed=None, **kwargs) -> Task:
    """The task behind a toy-text env, its states relabelled into ``[0, n_obs)`` (module doc)."""
    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    try:
        base = env.unwrapped
        if not hasattr(base, "P") or not isinstance(env.observation_space, gym.spaces.Discrete):
            raise ValueError(f"{env_id} publishes no tabular model (env.P)")
        n, n_actions = int(env.observation_space.n), int(env.action_space.n)
        max_steps = env.spec.max_episode_steps or DEFAULT_MAX_STEPS
        start = np.asarray(base.initial_state_distrib, np.float64)
        table = base.P
    finally:
        env.close()
    n_obs = n if n_obs is None else int(n_obs)
    if n > n_obs:
        raise ValueError(f"{env_id} has {n} states, more than the model's {n_obs} observation ids")

    terminal = np.zeros(n, bool)
    for s in range(n):
        for a in range(n_actions):
            for p, s2, _, done in table[s][a]:
                terminal[int(s2)] |= bool(done) and p > 0
    prob = np.zeros((n, n_actions, n))
    reward_sum = np.zeros_like(prob)
    reward_sq = np.zeros_like(prob)
    reachable = _reachable(table, start > 0, terminal)
    for s in np.flatnonzero(~terminal):
        for a in range(n_actions):
            for p, s2, r, done in table[s][a]:
                if p == 0.0:
                    continue
                s2 = int(s2)
                if reachable[s] and bool(done) != terminal[s2]:
                    raise ValueError(f"{env_id}: arriving in state {s2} terminates on some transitions only")
                prob[s, a, s2] += p
                reward_sum[s, a, s2] += p * r
                reward_sq[s, a, s2] += p * r * r
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(prob > 0, reward_sum / prob, 0.0)
        var = np.where(prob > 0, reward_sq / prob - mean**2, 0.0)
    prob /= np.where(prob.sum(axis=2, keepdims=True) > 0, prob.sum(axis=2, keepdims=True), 1.0)
    starts = np.flatnonzero(start > 0)
    return Task(
        n_states=n_obs,
        transition=prob,
        reward=mean,
        reward_noise=np.sqrt(np.maximum(var, 0.0)),
        start_states=starts,
        start_probs=start[starts] / start[starts].sum(),
        terminal=terminal,
        goal_terminates=False,
        max_steps=int(max_steps),
        state_mapping=np.random.default_rng(seed).permutation(n_obs)[:n],
    )


def _reachable(table, reachable: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    """States reachable from ``reachable`` (the start states) without passing a terminal state."""
    reachable = reachable.copy()
    frontier = list(np.flatnonzero(reachable))
    while frontier:
        s = frontier.pop()
        if terminal[s]:
            continue
        for outcomes in table[s].values():
            for p, s2, _, _ in outcomes:
                if p > 0 and not reachable[int(s2)]:
                    reachable[int(s2)] = True
                    frontier.append(int(s2))
    return reachable
