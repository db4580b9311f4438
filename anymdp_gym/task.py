"""The ``Task`` dataclass: one tabular (PO)MDP, immutable, portable to and from ``xenoverse``.

Arrays are indexed by the *internal* state order, in which value tends to ascend (start states
low, the goal last); ``state_mapping[i]`` is the observation id of internal state ``i``, so an
agent sees no order. With a state subset (``min_states``) only ``len(state_mapping)`` of the
``n_states`` observation ids are in use.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np

_ROW_SUM_TOL = 1e-6
_ARRAY_FIELDS = (
    "transition",
    "reward",
    "reward_noise",
    "start_states",
    "start_probs",
    "terminal",
    "state_mapping",
    "emission",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """One task. Construct through the samplers, ``load`` or ``from_xenoverse``; validated.

    Attributes:
        n_states: size of the observation-id space of states (``ns`` in the reference).
        transition: ``[n, A, n]`` next-state probabilities; rows of terminal states are zero.
        reward: ``[n, A, n]`` mean reward of ``(s, a, s')``.
        reward_noise: ``[n, A, n]`` standard deviation of the Gaussian reward noise.
        start_states: internal ids of the start states; ``start_probs`` their probabilities.
        terminal: ``[n]`` bool, pitfalls and (when ``goal_terminates``) the goal ``n - 1``.
        goal_terminates: whether the last internal state ends the episode.
        max_steps: episode length before truncation.
        state_mapping: ``[n]`` observation id of each internal state.
        task_type: ``"MDP"`` or ``"POMDP"``.
        emission: ``[n, n_obs]`` observation probabilities per hidden state (POMDP only).
    """

    n_states: int
    transition: np.ndarray
    reward: np.ndarray
    reward_noise: np.ndarray
    start_states: np.ndarray
    start_probs: np.ndarray
    terminal: np.ndarray
    goal_terminates: bool
    max_steps: int
    state_mapping: np.ndarray
    task_type: str = "MDP"
    emission: Optional[np.ndarray] = None

    def __post_init__(self):
        conversions = {
            "transition": np.float64,
            "reward": np.float64,
            "reward_noise": np.float64,
            "start_states": np.int64,
            "start_probs": np.float64,
            "terminal": np.bool_,
            "state_mapping": np.int64,
            "emission": np.float64,
        }
        for name, dtype in conversions.items():
            value = getattr(self, name)
            if value is None:
                continue
            array = np.array(value, dtype=dtype, copy=True)
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "n_states", int(self.n_states))
        object.__setattr__(self, "max_steps", int(self.max_steps))
        object.__setattr__(self, "goal_terminates", bool(self.goal_terminates))
        self._validate()

    # ----------------------------------------------------------------- properties
    @property
    def n_actions(self) -> int:
        return self.transition.shape[1]

    @property
    def n_active(self) -> int:
        """Number of states actually in the task (``<= n_states`` with a state subset)."""
        return self.transition.shape[0]

    @property
    def n_obs(self) -> int:
        """Size of the observation space: ``n_states`` for an MDP, emission width for a POMDP."""
        return self.n_states if self.emission is None else self.emission.shape[1]

    @property
    def one_step(self) -> bool:
        """Every episode is one pull, ended by termination wherever it lands: a multi-armed bandit
        (one state) or a contextual bandit (contexts drawn from the start distribution)."""
        return self.max_steps == 1

    @property
    def terminal_states(self) -> np.ndarray:
        return np.flatnonzero(self.terminal)

    # ----------------------------------------------------------------- validation
    def _validate(self) -> None:
        t = self.transition
        if t.ndim != 3 or t.shape[0] != t.shape[2] or t.shape[0] < 1:
            raise ValueError(f"transition must have shape [n, A, n], got {t.shape}")
        n, n_actions, _ = t.shape
        if n_actions < 2:
            raise ValueError(f"tasks need at least 2 actions, got {n_actions}")
        for name in ("reward", "reward_noise"):
            if getattr(self, name).shape != t.shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, transition {t.shape}")
        if self.terminal.shape != (n,):
            raise ValueError(f"terminal has shape {self.terminal.shape}, expected ({n},)")
        if self.state_mapping.shape != (n,):
            raise ValueError(f"state_mapping has shape {self.state_mapping.shape}, expected ({n},)")
        if self.n_states < n:
            raise ValueError(f"n_states={self.n_states} is smaller than the {n} states in the task")
        mapping = self.state_mapping
        if mapping.min() < 0 or mapping.max() >= self.n_states or len(np.unique(mapping)) != n:
            raise ValueError(f"state_mapping must hold {n} distinct ids in [0, {self.n_states})")
        if not np.all(np.isfinite(t)) or np.any(t < 0):
            raise ValueError("transition probabilities must be finite and non-negative")
        if not np.all(np.isfinite(self.reward)):
            raise ValueError("reward must be finite")
        if not np.all(np.isfinite(self.reward_noise)) or np.any(self.reward_noise < 0):
            raise ValueError("reward_noise must be finite and non-negative")
        row_error = np.abs(t.sum(axis=2) - 1.0)
        row_error[self.terminal] = 0.0
        if np.any(row_error > _ROW_SUM_TOL):
            s, a = np.argwhere(row_error > _ROW_SUM_TOL)[0]
            raise ValueError(f"transition row (s={s}, a={a}) sums to {t[s, a].sum():.6g}, not 1")
        starts = self.start_states
        if starts.ndim != 1 or starts.size == 0 or starts.min() < 0 or starts.max() >= n:
            raise ValueError(f"start_states must be a non-empty list of ids in [0, {n})")
        if self.start_probs.shape != starts.shape or np.any(self.start_probs < 0):
            raise ValueError("start_probs must be non-negative, one per start state")
        if abs(self.start_probs.sum() - 1.0) > _ROW_SUM_TOL:
            raise ValueError(f"start_probs sum to {self.start_probs.sum():.6g}, not 1")
        if np.any(self.terminal[starts]):
            raise ValueError("a start state is terminal")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.task_type not in ("MDP", "POMDP"):
            raise ValueError(f"task_type must be 'MDP' or 'POMDP', got {self.task_type!r}")
        if (self.task_type == "POMDP") != (self.emission is not None):
            raise ValueError("a POMDP task needs an emission matrix, an MDP task none")
        if self.emission is not None:
            e = self.emission
            if e.ndim != 2 or e.shape[0] != n or np.any(e < 0):
                raise ValueError(f"emission must be a non-negative [{n}, n_obs] matrix")
            if np.any(np.abs(e.sum(axis=1) - 1.0) > _ROW_SUM_TOL):
                raise ValueError("emission rows must sum to 1")

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the task to a ``.npz`` file."""
        arrays = {name: getattr(self, name) for name in _ARRAY_FIELDS if getattr(self, name) is not None}
        meta = {
            "n_states": self.n_states,
            "goal_terminates": self.goal_terminates,
            "max_steps": self.max_steps,
            "task_type": self.task_type,
        }
        np.savez(path, **arrays, **{k: np.asarray(v) for k, v in meta.items()})

    @classmethod
    def load(cls, path: str | Path) -> "Task":
        """Read a task written by ``save``; any file that is not one (missing, foreign, truncated,
        corrupt) raises ``ValueError`` naming it. Why every exception of the read: a damaged zip
        raises whatever its first bad byte leads to (measured by flipping each bit 0 and 7 and
        truncating at each length: ``BadZipFile``, ``EOFError``, ``NotImplementedError``,
        ``RuntimeError`` besides ``ValueError``); the zip's CRC-32 of each array catches damage to
        the data itself."""
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {name: data[name] for name in data.files}
        except Exception as err:
            raise ValueError(f"cannot read task file {path}: {type(err).__name__}: {err}") from None
        missing = {f.name for f in dataclasses.fields(cls) if f.name != "emission"} - set(fields)
        if missing:
            raise ValueError(f"task file {path} lacks {sorted(missing)}")
        try:
            fields["task_type"] = str(fields["task_type"])
            for name in ("n_states", "max_steps", "goal_terminates"):
                fields[name] = fields[name].item()
            return cls(**fields)
        except ValueError as err:
            raise ValueError(f"task file {path} holds no valid task: {err}") from None

    # ----------------------------------------------------------------- xenoverse interop
    def to_xenoverse(self) -> dict[str, Any]:
        """The reference's task dict (``xenoverse.anymdp``), accepted by its ``set_task``."""
        d: dict[str, Any] = {
            "ns": self.n_states,
            "na": self.n_actions,
            "max_steps": self.max_steps,
            "state_mapping": np.array(self.state_mapping),
            "transition": np.array(self.transition),
            "reward": np.array(self.reward),
            "reward_noise": np.array(self.reward_noise),
            "s_0": np.array(self.start_states),
            "s_0_prob": np.array(self.start_probs),
            "s_e": self.terminal_states.tolist(),
            "final_goal_terminate": self.goal_terminates,
            "task_type": self.task_type,
        }
        if self.emission is not None:
            d["no"] = self.emission.shape[1]
            d["observation_transition"] = np.array(self.emission)
        return d

    @classmethod
    def from_xenoverse(cls, d: dict[str, Any]) -> "Task":
        """Build from a reference task dict.

        The reference draws ``max_steps`` as a float and truncates once ``steps >= max_steps``,
        i.e. after ``ceil(max_steps)`` steps: that is the integer kept here. Its GARNET tasks
        carry no ``task_type``; they are MDPs.
        """
        n = len(d["state_mapping"])
        terminal = np.zeros(n, dtype=bool)
        terminal[np.asarray(d["s_e"], dtype=np.int64)] = True
        task_type = d.get("task_type", "MDP")
        return cls(
            n_states=int(d["ns"]),
            transition=d["transition"],
            reward=d["reward"],
            reward_noise=d["reward_noise"],
            start_states=np.asarray(d["s_0"]),
            start_probs=np.asarray(d["s_0_prob"]),
            terminal=terminal,
            goal_terminates=bool(d.get("final_goal_terminate", False)),
            max_steps=int(np.ceil(d["max_steps"])),
            state_mapping=np.asarray(d["state_mapping"]),
            task_type=task_type,
            emission=d.get("observation_transition") if task_type == "POMDP" else None,
        )

    def replace(self, **changes) -> "Task":
        return dataclasses.replace(self, **changes)
