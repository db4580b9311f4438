"""Dark Room, the grid task of Algorithm Distillation (Laskin et al., 2022), as a ``Task``.

The variant followed is AD's "Dark Room": a 9 x 9 room; the agent observes only its own cell
(not the goal) and starts every episode in the centre cell (4, 4); five actions, in this order:
left, right, up, down, no-op (a move into a wall leaves the agent where it is); reward 1 on
every step that ends on the goal cell, 0 otherwise; the goal does not end the episode, which is
truncated after 20 steps. So the best return is ``21 - d`` for a goal ``d >= 1`` moves from the
centre (20 on the centre itself), and a learner must find the goal by the reward alone.

Held-out goals: AD trains on some goals and tests on others without listing them; DPT (Lee et
al., 2023) holds out 20 % of its goals. Here ``goals("test")`` is a fixed 16 of the 81 cells (a
permutation drawn from ``GOAL_SPLIT_SEED``), ``goals("train")`` the other 65, so a model trained on
Dark Room data is evaluated on goals it never saw.

As a ``Task``, a room runs wherever AnyMDP tasks run: ``gym.make("AnyMDP-v0", task=...)``, the
batched env, exact planning (the oracle) and the evaluation suites. Cells get observation ids by
a seeded random permutation into ``[0, n_obs)``, as AnyMDP states do.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

from anymdp_gym.task import Task

SIZE = 9
EPISODE_STEPS = 20
START = (SIZE // 2, SIZE // 2)
MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0), (0, 0))
"""(row, column) change of each action: left, right, up, down, no-op."""
GOAL_SPLIT_SEED = 0xDA7C
N_TEST_GOALS = 16


def goals(split: Literal["train", "test"]) -> list[tuple[int, int]]:
    """The goal cells ``(row, column)`` of a split (module doc), in a fixed order."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    order = np.random.default_rng(GOAL_SPLIT_SEED).permutation(SIZE * SIZE)
    chosen = order[:N_TEST_GOALS] if split == "test" else order[N_TEST_GOALS:]
    return [divmod(int(c), SIZE) for c in chosen]


def darkroom_task(goal: tuple[int, int], n_obs: Optional[int] = None, seed=None) -> Task:
    """The room with its goal at ``goal`` (row, column), cells relabelled into ``[0, n_obs)``
    (default: the 81 cells) by a permutation drawn from ``seed``."""
    row, col = (int(x) for x in goal)
    if not (0 <= row < SIZE and 0 <= col < SIZE):
        raise ValueError(f"goal {goal} is outside the {SIZE} x {SIZE} room")
    n = SIZE * SIZE
    n_obs = n if n_obs is None else int(n_obs)
    if n_obs < n:
        raise ValueError(f"Dark Room has {n} cells, more than the {n_obs} observation ids")
    transition = np.zeros((n, len(MOVES), n))
    for cell in range(n):
        r, c = divmod(cell, SIZE)
        for a, (dr, dc) in enumerate(MOVES):
            r2, c2 = min(max(r + dr, 0), SIZE - 1), min(max(c + dc, 0), SIZE - 1)
            transition[cell, a, r2 * SIZE + c2] = 1.0
    reward = np.zeros_like(transition)
    reward[:, :, row * SIZE + col] = 1.0
    return Task(
        n_states=n_obs,
        transition=transition,
        reward=reward,
        reward_noise=np.zeros_like(transition),
        start_states=np.array([START[0] * SIZE + START[1]]),
        start_probs=np.ones(1),
        terminal=np.zeros(n, bool),
        goal_terminates=False,
        max_steps=EPISODE_STEPS,
        state_mapping=np.random.default_rng(seed).permutation(n_obs)[:n],
    )
