"""Baselines on the evaluation tasks, and the reference returns that normalise every score.

* **random** and **oracle** run as table policies inside ``rollout.table_rollout`` (the oracle's
  table is ``anymdp_gym.solvers.OracleSolver``'s greedy action per observation id).
* **q_learning** and **model_based** are ``anymdp_gym.solvers.QLearningSolver`` and
  ``ModelBasedSolver``, and the bandit algorithms **epsilon_greedy**, **ucb1** and **thompson**
  are ``EpsilonGreedySolver``, ``UCB1Solver`` and ``ThompsonSolver`` (textbook settings, that
  module's doc), driven step by step from Python (one object per task) against the very
  same ``env_jax`` dynamics, for the same number of interaction steps as the model. In the
  offline and imitation modes they first ``update`` on the context's transitions, as the model
  first reads them.
* **ppo** is rejax's PPO, trained on each task's gymnax env for the same budget, its curve its
  returns while it trains (``omnirl_jax.eval.ppo``).

Decisions where the issue is silent:

* The oracle is greedy in Q* at gamma 0.994 (``opt3``, the policy the model's labels come from),
  so a normalised return of 1 means "as good as the teacher"; it is not the finite-horizon
  optimum, and a learner may exceed 1.
* ``R_random`` and ``R_oracle`` are the *exact* expected episode returns of the uniform-random and
  oracle policies from the start distribution, with truncation at ``max_steps`` (finite-horizon
  policy evaluation, no sampling noise). A task whose oracle is not better than random by at
  least ``MIN_GAP`` cannot be normalised; its scores are NaN and left out of the means.
* Baseline hyper-parameters are fixed, not tuned per task: Q-learning alpha 0.1, gamma 0.99;
  model-based RL gamma 0.99, c 0.005, 20 sweeps; epsilon-greedy noise from 1.0 (Q-learning) and
  0.5 (model-based), halving every ``steps / 8`` interaction steps, so exploration fades within
  the budget whatever the budget.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np

from anymdp_gym.solvers import (
    EpsilonGreedySolver,
    ModelBasedSolver,
    OracleSolver,
    QLearningSolver,
    ThompsonSolver,
    UCB1Solver,
)
from anymdp_gym.task import Task
from anymdp_gym.jax import dynamics as env_jax
from omnirl_jax.eval.rollout import Records, Trajectory, table_rollout

ORACLE_GAMMA = 0.994
MIN_GAP = 1e-6
SOLVERS = ("q_learning", "model_based", "epsilon_greedy", "ucb1", "thompson")


def expected_return(task: Task, policy: np.ndarray) -> float:
    """Exact expected undiscounted return of an episode (truncated at ``max_steps``) under a
    stochastic ``policy[s, a]`` over internal states. Terminal states have zero rows, so value
    stops accruing on arrival."""
    p_pi = np.einsum("sa,sat->st", policy, task.transition)
    r_pi = np.einsum("sa,sat,sat->s", policy, task.transition, task.reward)
    v = np.zeros(task.n_active)
    for _ in range(task.max_steps):
        v = r_pi + p_pi @ v
    return float(task.start_probs @ v[task.start_states])


def reference_returns(task: Task) -> tuple[float, float]:
    """``(R_random, R_oracle)`` of ``task`` (module doc)."""
    uniform = np.full((task.n_active, task.n_actions), 1.0 / task.n_actions)
    oracle = np.eye(task.n_actions)[OracleSolver(task, ORACLE_GAMMA).state_actions]
    return expected_return(task, uniform), expected_return(task, oracle)


def normalise(returns: np.ndarray, r_random: np.ndarray, r_oracle: np.ndarray) -> np.ndarray:
    """``(R - R_random) / (R_oracle - R_random)`` per task (axis 0); NaN where the gap is too small."""
    gap = np.asarray(r_oracle) - np.asarray(r_random)
    ok = gap > MIN_GAP * np.maximum(1.0, np.abs(r_oracle))
    scale = np.where(ok, gap, np.nan)
    shape = (-1,) + (1,) * (np.ndim(returns) - 1)
    return (returns - np.reshape(r_random, shape)) / np.reshape(scale, shape)


def oracle_table(task: Task, n_obs: int, gamma: float = ORACLE_GAMMA) -> np.ndarray:
    """``[n_obs]`` action of the oracle at ``gamma`` per observation id (0 for unused ids)."""
    table = np.zeros(n_obs, np.int32)
    table[: task.n_states] = OracleSolver(task, gamma).obs_actions
    return table


def table_baseline(name: str, tasks: Sequence[Task], env_params: env_jax.EnvParams, n_obs: int, key,
                   n_steps: int) -> Trajectory:
    """The ``random`` or ``oracle`` baseline on every task."""
    if name == "random":
        greedy, eps = np.zeros((len(tasks), n_obs), np.int32), np.ones(len(tasks), np.float32)
    elif name == "oracle":
        greedy, eps = np.stack([oracle_table(t, n_obs) for t in tasks]), np.zeros(len(tasks), np.float32)
    else:
        raise ValueError(f"unknown table baseline {name!r}")
    return table_rollout(env_params, greedy, eps, key, n_steps=n_steps)


def make_solver(name: str, n_obs: int, n_actions: int, n_steps: int, seed: int):
    """A fresh learner for a task of ``n_actions`` with the fixed hyper-parameters of the module doc."""
    halflife = max(n_steps / 8.0, 1.0)
    if name == "q_learning":
        return QLearningSolver(n_obs, n_actions, alpha=0.1, gamma=0.99, noise=1.0,
                               noise_halflife=halflife, seed=seed)
    if name == "model_based":
        return ModelBasedSolver(n_obs, n_actions, gamma=0.99, c=0.005, sweeps=20, noise=0.5,
                                noise_halflife=halflife, seed=seed)
    bandit = {"epsilon_greedy": EpsilonGreedySolver, "ucb1": UCB1Solver, "thompson": ThompsonSolver}
    if name in bandit:
        return bandit[name](n_obs, n_actions, seed=seed)
    raise ValueError(f"unknown solver baseline {name!r}")


def solver_seed(seed: int, task: int) -> int:
    """Seed of the learner on task ``task`` of a group."""
    return seed * 1_000_003 + task


@jax.jit
def _step_all(env_params, env, actions, key, t):
    """One step of every task, keyed by ``(key, t)``; returns what the learners need in one pytree."""
    keys = jax.random.split(jax.random.fold_in(key, t), actions.shape[0])
    env, out = env_jax.step_batch(env_params, env, actions, keys)
    return env, (out.next_obs, out.reward, out.terminated, out.truncated, env.obs)


def solver_baseline(name: str, tasks: Sequence[Task], env_params: env_jax.EnvParams, n_obs: int, key,
                    n_steps: int, seed: int, context: Optional[Records] = None) -> Trajectory:
    """``n_steps`` interaction steps of a learner per task, after learning from ``context``."""
    solvers = [make_solver(name, n_obs, task.n_actions, n_steps, solver_seed(seed, i)) for i, task in enumerate(tasks)]
    if context is not None:
        feed_context(solvers, context)
    k_reset, k_steps = jax.random.split(key)
    env = env_jax.reset_batch(env_params, jax.random.split(k_reset, len(tasks)))
    obs = np.asarray(env.obs)
    shape = (len(tasks), n_steps)
    out = Trajectory(*(np.zeros(shape, dtype) for dtype in (np.int32, np.int32, np.float32, np.int32, bool, bool)))
    for t in range(n_steps):
        a = np.array([s.act(int(o)) for s, o in zip(solvers, obs)], np.int32)
        env, step = _step_all(env_params, env, a, k_steps, t)
        next_obs, r, term, trunc, reset_obs = jax.device_get(step)
        for i, s in enumerate(solvers):
            s.update(int(obs[i]), int(a[i]), float(r[i]), int(next_obs[i]), bool(term[i]), bool(trunc[i]))
        for field, value in zip(out, (obs, a, r, next_obs, term, trunc)):
            field[:, t] = value
        obs = reset_obs
    return out


class TablePlay(NamedTuple):
    """What a baseline needs to play a group of table tasks: the tasks (and their ``env_jax``
    arrays), the vocabulary, its key, the budget, the seed of its learners, and the context of
    the offline and imitation modes (None online)."""

    tasks: Sequence[Task]
    env_params: env_jax.EnvParams
    n_obs: int
    key: jax.Array
    n_steps: int
    seed: int
    context: Optional[Records] = None


def _table(name: str, game: TablePlay) -> Trajectory:
    return table_baseline(name, game.tasks, game.env_params, game.n_obs, game.key, game.n_steps)


def _solver(name: str, game: TablePlay) -> Trajectory:
    return solver_baseline(name, game.tasks, game.env_params, game.n_obs, game.key, game.n_steps, seed=game.seed,
                           context=game.context)


def _ppo(game: TablePlay):
    from omnirl_jax.eval import ppo  # imported here: gymnax and rejax take seconds to import

    n_actions = {task.n_actions for task in game.tasks}
    if len(n_actions) != 1:
        raise ValueError(f"ppo plays a group of tasks with one number of actions, got {sorted(n_actions)}")
    return ppo.ppo_baseline(ppo.table_env(game.n_obs, n_actions.pop()), game.env_params, game.key, game.n_steps)


TABLE_BASELINES: dict[str, Callable[[TablePlay], Trajectory]] = {
    **{name: functools.partial(_table, name) for name in ("random", "oracle")},
    **{name: functools.partial(_solver, name) for name in SOLVERS},
    "ppo": _ppo,
}
"""Baseline name -> runner on a group of table tasks: a function of a ``TablePlay`` returning
its play, ``[B, T]`` ``reward`` and ``done`` (a ``Trajectory``; ``ppo``'s records those two
only, ``omnirl_jax.eval.ppo.Steps``)."""
CONTEXT_FREE = ("random", "oracle", "ppo")
"""Baselines that ignore any context: played once per group, scored in every mode (PPO is
on-policy and cannot learn from another policy's records)."""


def feed_context(solvers: Sequence, context: Records) -> None:
    """Every action record of ``context`` (``[B, T]``, one row per solver) as an ``update``."""
    c = jax.device_get(context)
    for i, solver in enumerate(solvers):
        for t in range(c.obs.shape[1]):
            if c.action[i, t] >= solver.n_actions:  # a terminal record: no transition
                continue
            solver.update(int(c.obs[i, t]), int(c.action[i, t]), float(c.reward[i, t]), int(c.next_obs[i, t]),
                          bool(c.terminated[i, t]), bool(c.truncated[i, t]))
