"""Text and picture of a task and the current state, numpy only (no plotting libraries).

The picture is the expected next-state matrix ``mean_a T[s, a, s']`` in the internal order, in
which the band structure (and the goal at the bottom right) is visible; brighter = likelier.
Columns of terminal states are tinted red, start rows green, the current state's row blue.
"""

from __future__ import annotations

import numpy as np

from anymdp_gym.task import Task

_MIN_PIXELS = 256


def task_image(task: Task) -> np.ndarray:
    """``uint8 [H, W, 3]`` picture of ``task`` without a current state (computed once per task)."""
    mean_next = task.transition.mean(axis=1)
    peak = mean_next.max()
    level = np.sqrt(mean_next / peak) if peak > 0 else mean_next  # sqrt: faint band edges stay visible
    gray = (level * 255.0).astype(np.uint8)
    image = np.repeat(gray[:, :, None], 3, axis=2)
    image[:, task.terminal, 0] = np.maximum(image[:, task.terminal, 0], 96)
    image[task.start_states, :, 1] = np.maximum(image[task.start_states, :, 1], 64)
    scale = max(1, -(-_MIN_PIXELS // task.n_active))
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def frame(base: np.ndarray, n_active: int, state: int) -> np.ndarray:
    """``base`` (from ``task_image``) with the row of ``state`` marked."""
    out = base.copy()
    scale = base.shape[0] // n_active
    row = out[state * scale : (state + 1) * scale]
    row[..., 2] = np.maximum(row[..., 2], 160)
    return out


def text(task: Task, state: int, steps: int, last: tuple[int, float] | None) -> str:
    """One line per field: sizes, step count, and a strip of the states in internal order.

    Strip legend: ``@`` current state, ``S`` start, ``x`` pitfall, ``G`` terminal goal, ``.`` other.
    """
    strip = np.full(task.n_active, ".", dtype="<U1")
    strip[task.terminal] = "x"
    if task.goal_terminates:
        strip[-1] = "G"
    strip[task.start_states] = "S"
    strip[state] = "@"
    kind = task.task_type if task.n_active > 1 else "bandit"
    lines = [
        f"{kind}: {task.n_active} states, {task.n_actions} actions, obs ids {task.n_obs}",
        f"step {steps}/{task.max_steps}, internal state {state} (state id {task.state_mapping[state]})",
        "".join(strip),
    ]
    if last is not None:
        lines.append(f"last action {last[0]}, reward {last[1]:+.4f}")
    return "\n".join(lines) + "\n"
