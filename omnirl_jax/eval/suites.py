"""Suites of held-out evaluation tasks, each fully determined by its definition here.

A suite names a task family, sizes, how many tasks, where their seeds come from, and the budget
(interaction steps per task and mode, the width of the steps window that a curve point averages
over, the context length of the offline and imitation modes).

Held-out seeds: AnyMDP and GARNET task ``i`` of a suite is drawn from
``np.random.SeedSequence([EVAL_SEED, n_states, first_task + i])``. Training data draws task ``j``
from ``SeedSequence([seed, j])`` (``omnirl_jax.data.generate``), so the two never meet as long as
the data seed is not ``EVAL_SEED``.
Gymnasium tasks are fixed; a suite plays ``n_tasks`` relabellings of each (``gym_adapter``), with
relabelling seeds ``SeedSequence([EVAL_SEED, i])``.

``darkroom``: Algorithm Distillation's Dark Room (``anymdp_gym.darkroom``: 9 x 9 cells, start in
the centre, five actions, reward 1 on every step on the hidden goal, 20-step episodes), task
``i`` with the ``i``-th held-out goal (``darkroom.goals("test")``, 16 goals; more tasks cycle
through them) and its cells relabelled with seed ``SeedSequence([EVAL_SEED, i])``; it needs a
model with at least 81 observation ids. Exact oracle and normalisation, all three modes.

``mountaincar`` and ``pendulum``: live Gymnasium tasks with discretised observations
(``live``: MountainCar 8 x 8 bins, 64 ids, 3 actions; Pendulum 12 angle x 5 velocity bins, 60
ids, 5 torques), played through their own ``step`` (no table): online mode only, reference
returns measured (``live.reference_returns``), the ``oracle`` a controller on the true state.
Instance ``i`` relabels the ids with seed ``SeedSequence([EVAL_SEED, i])`` and seeds its env
with ``EVAL_SEED + i``.

Windows are at least as long as the longest episode of the family (AnyMDP: ``max_steps`` is at
most ``max(min(8 S, 500), 4 S + 1)``; a bandit or contextual-bandit pull is an episode), so every window of every task
holds an episode end. Step budgets match the ladder rungs' training sequences
(``configs/ladder``), so the model is never asked to act beyond its context.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from anymdp_gym import darkroom
from anymdp_gym.sampling import sample_contextual_bandit, sample_garnet_task, sample_task
from anymdp_gym.task import Task
from omnirl_jax.eval.gym_adapter import GYM_TASKS, gym_size, task_from_gym

MODES = ("online", "offline", "imitation")
"""What the model sees before acting (``omnirl_jax.eval.evaluate``)."""
MDP_BASELINES = ("random", "oracle", "q_learning", "model_based", "ppo")
LIVE_MODES = ("online",)
"""Modes of live suites: the offline and imitation contexts are drawn from table policies."""
BANDIT_BASELINES = ("random", "oracle", "epsilon_greedy", "ucb1", "thompson")

EVAL_SEED = 0x0E7A1
"""Entropy word reserved for evaluation tasks; never use it as a training data seed."""


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    family: Literal["anymdp", "garnet", "cbandit", "gym", "darkroom", "live"]
    n_states: int = 16
    """States (and observation ids) of AnyMDP / GARNET tasks (AnyMDP with 1: multi-armed bandits),
    contexts of contextual bandits (AnyMDP's reward scheme); unused by ``gym``."""
    n_actions: int = 5
    n_tasks: int = 64
    """Tasks (AnyMDP / GARNET), or relabellings of each Gymnasium task."""
    first_task: int = 0
    steps: int = 4096
    """Interaction steps per task in each mode (model and baselines alike)."""
    window: int = 512
    """Steps per curve point: the mean return of the episodes that end inside the window."""
    context_steps: int = 2048
    """Records of behaviour shown before acting in the offline and imitation modes."""
    gym_tasks: tuple[str, ...] = ()
    """Names in ``GYM_TASKS`` (family ``gym``) or ``LIVE_TASKS`` (family ``live``)."""
    baselines: tuple[str, ...] = MDP_BASELINES
    """Agents played beside the model by default (``omnirl-eval --agents`` overrides)."""
    baseline: str = "q_learning"
    """The classic learner a model's result is compared with (``benchmarks/icrl_ladder.py``,
    evaluation during training): tabular Q-learning on MDPs, epsilon-greedy (per context) on
    bandits; Thompson sampling (0.933 on ``bandit-5``) is reported beside it as the stretch."""

    @property
    def live(self) -> bool:
        """Played through live Gymnasium envs (``evaluate.evaluate_live_group``), not tables."""
        return self.family == "live"

    def groups(self) -> list[str]:
        """The task groups reported separately: one per Gymnasium task, else the suite itself."""
        return list(self.gym_tasks) if self.family in ("gym", "live") else [self.name]

    def group_size(self, group: str) -> tuple[int, int]:
        """``(observation ids needed, actions needed)`` by a group's tasks."""
        if self.family == "gym":
            return gym_size(group)
        if self.live:
            from omnirl_jax.eval.live import LIVE_TASKS  # imported only here: it imports JAX, and --help must not

            return LIVE_TASKS[group].size
        return (self.n_states, self.n_actions)

    def tasks(self, group: str, n_obs: int, n_tasks: int | None = None) -> list[Task]:
        """The group's tasks, their observation ids in ``[0, n_obs)``."""
        count = self.n_tasks if n_tasks is None else n_tasks
        ids = range(self.first_task, self.first_task + count)
        relabel = [np.random.SeedSequence([EVAL_SEED, i]) for i in ids]
        if self.family == "darkroom":
            goals = darkroom.goals("test")
            return [darkroom.darkroom_task(goals[i % len(goals)], n_obs, seed=seed) for i, seed in zip(ids, relabel)]
        if self.family == "gym":
            env_id, kwargs = GYM_TASKS[group]
            return [task_from_gym(env_id, n_obs, seed=seed, **kwargs) for seed in relabel]
        rngs = [np.random.default_rng(np.random.SeedSequence([EVAL_SEED, self.n_states, i])) for i in ids]
        if self.family == "garnet":
            return [sample_garnet_task(self.n_states, self.n_actions, seed=rng) for rng in rngs]
        if self.family == "cbandit":
            return [sample_contextual_bandit(self.n_states, self.n_actions, seed=rng) for rng in rngs]
        return [sample_task(self.n_states, self.n_actions, seed=rng) for rng in rngs]

    def instances(self, group: str, n_obs: int, n_tasks: int | None = None) -> list["live.Instance"]:
        """A live group's instances, their ids relabelled into ``[0, n_obs)``."""
        from omnirl_jax.eval import live

        count = self.n_tasks if n_tasks is None else n_tasks
        task = live.LIVE_TASKS[group]
        n_ids = task.size[0]
        return [live.Instance(task, np.random.default_rng(np.random.SeedSequence([EVAL_SEED, i])).permutation(n_obs)[:n_ids],
                         EVAL_SEED + i) for i in range(self.first_task, self.first_task + count)]


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("bandit-5", "anymdp", n_states=1, steps=256, window=32, context_steps=128, baselines=BANDIT_BASELINES,
              baseline="epsilon_greedy"),
        Suite("cbandit-8", "cbandit", n_states=8, steps=1024, window=128, context_steps=512, baselines=BANDIT_BASELINES,
              baseline="epsilon_greedy"),
        Suite("anymdp-8", "anymdp", n_states=8, steps=2048, window=256, context_steps=1024),
        Suite("anymdp-16", "anymdp", n_states=16, steps=4096, window=512, context_steps=2048),
        Suite("anymdp-32", "anymdp", n_states=32, steps=8192, window=1024, context_steps=4096),
        Suite("anymdp-64", "anymdp", n_states=64, steps=16384, window=2048, context_steps=8192, n_tasks=32),
        Suite("anymdp-128", "anymdp", n_states=128, steps=32768, window=4096, context_steps=16384, n_tasks=32),
        Suite("garnet-16", "garnet", n_states=16, steps=4096, window=512, context_steps=2048),
        Suite("gym", "gym", n_tasks=16, steps=8192, window=1024, context_steps=4096, gym_tasks=tuple(GYM_TASKS)),
        Suite("darkroom", "darkroom", n_states=darkroom.SIZE**2, n_tasks=16, steps=2048, window=256, context_steps=1024),
        Suite("mountaincar", "live", n_tasks=8, steps=8192, window=1024, gym_tasks=("MountainCar",)),
        Suite("pendulum", "live", n_tasks=8, steps=8192, window=1024, gym_tasks=("Pendulum",)),
    )
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r} (known: {', '.join(SUITES)})")
    return SUITES[name]
