"""Gymnasium environments ``AnyMDP-v0``, ``AnyPOMDP-v0`` and ``GarnetMDP-v0``.

One env plays many episodes of one task, as in-context RL needs: the task is drawn at the first
``reset``, at every ``reset(seed=...)`` and on ``reset(options={"new_task": True})``; a plain
``reset()`` keeps it. ``options={"task": task}`` installs a given task, and the ``task=``
argument fixes one for the env's lifetime (a seed then only drives the dynamics).

Spaces:
    observation ``Discrete(n_states)`` -- the state's observation id, a random permutation of
    the internal order (``Discrete(n_obs)`` for ``AnyPOMDP-v0``: an id emitted by the hidden
    state through a sparse random emission matrix); action ``Discrete(n_actions)``.

Rewards:
    ``r ~ Normal(reward[s, a, s'], reward_noise[s, a, s'])``: the composite AnyMDP reward
    (potential shaping, position, state-action cost, step reward, arrival reward on terminal
    states); GARNET tasks have Gaussian mean rewards and no noise.

Episode end:
    ``terminated`` on arrival in a terminal state (pitfalls, and the goal when it terminates;
    a bandit, ``n_states=1``, ends after every step); ``truncated`` after ``task.max_steps``
    steps unless the episode terminated on that step (never both, so a learner bootstraps
    exactly when ``truncated``). Stepping a finished episode, or before the first reset, raises ``ResetNeeded``.

Arguments (``gym.make(id, ...)``):
    n_states: observation ids of states, >= 8, or 1 for a multi-armed bandit (default 16).
    n_actions: actions, >= 2 (default 5).
    min_states: draw only ``randint(min_states, n_states + 1)`` active states.
    task: a ``Task`` (or a ``xenoverse`` task dict) to play instead of sampling; sizes come
        from it.
    render_mode: ``"ansi"`` (text) or ``"rgb_array"`` (the expected next-state matrix, current
        state marked; see ``render.py``).
    AnyMDP-v0 / AnyPOMDP-v0 also take the band reaches ``min_forward``, ``min_backward``,
    ``max_forward``, ``max_backward`` (see ``sampling.py``); AnyPOMDP-v0 takes ``n_obs``
    (default ``n_states``); GarnetMDP-v0 takes ``branching`` (default 2) and ``reward_std``
    (default 0.1).
    family: the task family, set by the id as FrozenLake8x8 sets its map (``AnyMDPEnv(family=
        "anypomdp")`` is ``AnyPOMDP-v0``): ``"anymdp"``, ``"anypomdp"`` or ``"garnet"``.

Info keys:
    ``state``: internal index of the current state (ascending value order);
    ``oracle_value``: optimal value ``V*(state)`` at ``gamma = 0.99`` (ignoring truncation),
    computed once per task; after a step also ``mean_reward``: the noise-free reward
    ``reward[s, a, s']`` of the transition.

Reproducibility: the task and every random number of stepping derive from ``self.np_random``
(the task sampler draws from it, then one SplitMix64 stream is seeded from it, see
``random_stream.py``), so a seed gives the same task and trajectory in any process, and sub-env
``i`` of the batched env reset with seed ``s`` replays this env reset with seed ``s + i``.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Optional

import gymnasium as gym
import numba
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from anymdp_gym import render
from anymdp_gym.dynamics import compile_tasks, reset_single, step_single
from anymdp_gym.random_stream import seed_streams
from anymdp_gym.planning import expected_rewards, row_windows, value_iteration
from anymdp_gym.sampling import add_emission, check_sizes, sample_garnet_task, sample_task
from anymdp_gym.task import Task

ORACLE_GAMMA = 0.99
TaskSampler = Callable[..., Task]  # called as sampler(seed=generator)


# --------------------------------------------------------------------------- tasks and seeds
def as_task(task: Any) -> Task:
    """A ``Task`` from a ``Task`` or a ``xenoverse`` task dict; anything else is a ValueError."""
    if isinstance(task, Task):
        return task
    if isinstance(task, dict):
        try:
            return Task.from_xenoverse(task)
        except KeyError as err:
            raise ValueError(f"task dict lacks key {err}") from None
    raise ValueError(f"task must be an anymdp_gym.Task or a xenoverse task dict, got {type(task).__name__}")


def oracle_values(task: Task) -> np.ndarray:
    """``V*`` at ``ORACLE_GAMMA`` per internal state.

    A bandit's pull ends every episode (``Task.one_step``), which the planner (it sees no terminal
    state there) would treat as a continuing loop, so a state's value is its best expected reward.
    """
    if task.one_step:
        lo, hi = row_windows(task.transition)
        return expected_rewards(task.transition, task.reward, lo, hi).max(axis=1)
    return value_iteration(task, ORACLE_GAMMA)[1]


def draw_task_and_stream(
    rng: np.random.Generator, sampler: Optional[TaskSampler], new_task: bool
) -> tuple[Optional[Task], np.ndarray]:
    """What a seeded reset draws from ``rng``, in this order: a task (if ``new_task``), then the
    dynamics stream. Shared by the single and the batched env, so their sub-envs agree."""
    task = sampler(seed=rng) if new_task else None
    return task, seed_streams(rng, 1)


def check_reset_options(options: Optional[dict], sampler: Optional[TaskSampler]) -> dict:
    """``options`` of a reset (``{}`` for None), checked: only ``task`` and ``new_task``, and
    ``new_task`` only where the env samples its tasks. Shared by the single and the batched env."""
    options = options or {}
    unknown = set(options) - {"task", "new_task"}
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; known: 'task', 'new_task'")
    if options.get("new_task") and sampler is None:
        raise ValueError("new_task: this env plays the fixed task given at construction")
    return options


def check_fits(task: Task, n_obs: int, n_actions: int) -> None:
    """A one-line error unless ``task`` fits an env's spaces. Shared by every env (gymnax too)."""
    if task.n_obs != n_obs or task.n_actions != n_actions:
        raise ValueError(f"task has {task.n_obs} observations and {task.n_actions} actions; "
                         f"this env's spaces need {n_obs} and {n_actions}")


def _check_positive_ints(**values) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _bind(dispatcher, *args) -> Callable:
    """The compiled entry point of ``dispatcher`` for exactly these argument types.

    Why: numba's per-call type dispatch over a ``TaskTables`` tuple costs ~1.5 us, most of a
    single step; the env always passes these same objects, so it resolves the types once.
    """
    return dispatcher.compile(tuple(numba.typeof(x) for x in args))


# --------------------------------------------------------------------------- task families
# A family turns the env's checked sizes (and its own arguments) into a sampler and the number of
# observation ids; ``gym.make`` picks one through the registered ``family`` argument.
def _anymdp(task, n_states, n_actions, min_states, *, min_forward=1, min_backward=1, max_forward=None,
            max_backward=None) -> tuple[TaskSampler, int]:
    reaches = dict(min_forward=min_forward, min_backward=min_backward, max_forward=max_forward, max_backward=max_backward)
    _check_positive_ints(**reaches)
    return functools.partial(sample_task, n_states, n_actions, min_states=min_states, **reaches), n_states


def _sample_pomdp(n_obs: Optional[int], sample_mdp: TaskSampler, seed: np.random.Generator) -> Task:
    return add_emission(sample_mdp(seed=seed), n_obs, seed=seed)


def _anypomdp(task, n_states, n_actions, min_states, *, n_obs=None, **reaches) -> tuple[TaskSampler, int]:
    _check_positive_ints(n_obs=n_obs)
    if task is not None and n_obs is not None and n_obs != task.n_obs:
        raise ValueError(f"n_obs={n_obs} contradicts the given task's n_obs={task.n_obs}")
    n_obs = n_states if n_obs is None else n_obs
    sample_mdp, _ = _anymdp(task, n_states, n_actions, min_states, **reaches)
    return functools.partial(_sample_pomdp, n_obs, sample_mdp), n_obs


def _garnet(task, n_states, n_actions, min_states, *, branching=2, reward_std=0.1) -> tuple[TaskSampler, int]:
    if task is None and n_states == 1:
        raise ValueError("GARNET tasks need n_states >= 8")
    lowest = n_states if min_states is None else min_states
    if not isinstance(branching, (int, np.integer)) or not 1 <= branching <= lowest:
        raise ValueError(f"branching must be an integer in [1, {lowest}], got {branching!r}")
    if not reward_std >= 0:
        raise ValueError(f"reward_std must be >= 0, got {reward_std!r}")
    sampler = functools.partial(
        sample_garnet_task, n_states, n_actions, min_states=min_states, branching=branching, reward_std=reward_std
    )
    return sampler, n_states


FAMILIES = {"anymdp": _anymdp, "anypomdp": _anypomdp, "garnet": _garnet}
"""Task family of each registered id's ``family`` argument: ``AnyMDP-v0``, ``AnyPOMDP-v0``,
``GarnetMDP-v0``."""


# --------------------------------------------------------------------------- the env
def _sizes(task: Optional[Task], n_states, n_actions, min_states) -> tuple[int, int]:
    """Final ``(n_states, n_actions)``: from a given task, else the arguments (defaults 16, 5)."""
    if task is None:
        n_states = 16 if n_states is None else n_states
        n_actions = 5 if n_actions is None else n_actions
        check_sizes(n_states, n_actions, min_states)
        return n_states, n_actions
    for name, given, actual in (("n_states", n_states, task.n_states), ("n_actions", n_actions, task.n_actions)):
        if given is not None and given != actual:
            raise ValueError(f"{name}={given} contradicts the given task's {name}={actual}")
    return task.n_states, task.n_actions


class AnyMDPEnv(gym.Env):
    """``AnyMDP-v0``, ``AnyPOMDP-v0`` and ``GarnetMDP-v0``, one per ``family`` (``FAMILIES``);
    see the module docstring for spaces, rewards, episode end, arguments and info."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        n_states: Optional[int] = None,
        n_actions: Optional[int] = None,
        min_states: Optional[int] = None,
        task: Any = None,
        render_mode: Optional[str] = None,
        *,
        family: str = "anymdp",
        **family_args,
    ):
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
        task = None if task is None else as_task(task)
        n_states, n_actions = _sizes(task, n_states, n_actions, min_states)
        sampler, n_obs = FAMILIES[family](task, n_states, n_actions, min_states, **family_args)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Discrete(n_obs if task is None else task.n_obs)
        self.action_space = spaces.Discrete(n_actions)
        self._n_actions = n_actions
        self._fixed_task = task
        self._sampler = None if task is not None else sampler
        self.task: Optional[Task] = None
        self._tables = None
        self._rng: Optional[np.ndarray] = None
        self._cur = np.zeros(2, dtype=np.int64)  # [internal state, steps]
        self._values = None
        self._done = True
        self._last: Optional[tuple[int, float]] = None
        self._image = None
        self._step_fn = None

    # ----------------------------------------------------------------- task handling
    def _install(self, task: Task) -> None:
        check_fits(task, self.observation_space.n, self._n_actions)
        self.task = task
        self._tables = compile_tasks([task])
        self._values = oracle_values(task)
        self._image = None
        self._step_fn = _bind(step_single, self._tables, self._cur, self._rng, 0)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        options = check_reset_options(options, self._sampler)
        given = None if options.get("task") is None else as_task(options["task"])
        if seed is not None or self._rng is None:
            drawn, self._rng = draw_task_and_stream(self.np_random, self._sampler, self._sampler is not None and given is None)
            self._install(next(t for t in (given, drawn, self._fixed_task) if t is not None))
        elif given is not None:
            self._install(given)
        elif options.get("new_task"):
            self._install(self._sampler(seed=self.np_random))
        obs, state = reset_single(self._tables, self._cur, self._rng)
        self._done = False
        self._last = None
        return obs, {"state": state, "oracle_value": float(self._values[state])}

    def step(self, action):
        if self._done:
            raise ResetNeeded("step() needs reset() first: no episode is running")
        try:
            a = operator.index(action)
        except TypeError:
            raise ValueError(f"action must be an integer, got {action!r}") from None
        if not 0 <= a < self._n_actions:
            raise ValueError(f"action {a} is outside [0, {self._n_actions})")
        obs, reward, terminated, truncated, mean, state = self._step_fn(self._tables, self._cur, self._rng, a)
        self._done = terminated or truncated
        self._last = (a, reward)
        info = {"state": state, "oracle_value": float(self._values[state]), "mean_reward": mean}
        return obs, reward, terminated, truncated, info

    # ----------------------------------------------------------------- rendering, pickling
    def render(self):
        if self.task is None:
            raise ResetNeeded("render() needs reset() first: no task yet")
        state = int(self._cur[0])
        if self.render_mode == "ansi":
            return render.text(self.task, state, int(self._cur[1]), self._last)
        if self.render_mode == "rgb_array":
            if self._image is None:
                self._image = render.task_image(self.task)
            return render.frame(self._image, self.task.n_active, state)
        return None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_step_fn"] = None  # a compiled entry point; re-bound on unpickling
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._tables is not None:
            self._step_fn = _bind(step_single, self._tables, self._cur, self._rng, 0)

