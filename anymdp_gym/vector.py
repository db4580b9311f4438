"""Numba-batched vector envs: ``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``.

Each sub-env plays its own task; one compiled call steps all of them through the shared
``dynamics.step_env`` kernel, so sub-env ``i`` reset with seed ``s`` replays the single env
(``gym.make(id)``) reset with seed ``s + i`` -- same task, observations, rewards and episode
ends (a list of seeds gives sub-env ``i`` seed ``seeds[i]``). Tasks follow the single env's
rules: drawn at the first reset, at every seeded reset and on ``options={"new_task": True}``;
kept across plain resets and autoresets; ``options={"task": t}`` installs ``t`` (one task for
all, or one per sub-env).

Autoreset mode: ``SAME_STEP``. A finished sub-env is reset inside the same ``step`` call, so
every call is a real transition for every sub-env (no idle no-op steps to count or mask, and
the trajectories line up with a single env's ``step; if done: reset`` loop). The returned
observation is then the new episode's first; the arrival observation is in
``info["final_obs"]`` (masked by ``info["_final_obs"]``; unmasked entries equal the returned
observation). ``info`` also holds, per sub-env, ``mean_reward`` (of the transition), ``state``
and ``oracle_value`` (of the returned observation's state), each with its ``_key`` mask.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from anymdp_gym import render
from anymdp_gym.dynamics import BatchEnvs, BatchSteps, compile_tasks, reset_batch, step_batch
from anymdp_gym.env import AnyMDPEnv, as_task, check_fits, check_reset_options, draw_task_and_stream, oracle_values
from anymdp_gym.task import Task


class AnyMDPVectorEnv(VectorEnv):
    """Batched ``AnyMDP-v0``, ``AnyPOMDP-v0`` and ``GarnetMDP-v0``: ``num_envs`` plus the single
    env's arguments, ``family`` included (see module doc)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["ansi", "rgb_array"]}

    def __init__(self, num_envs: int, render_mode: Optional[str] = None, **kwargs):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        template = AnyMDPEnv(render_mode=render_mode, **kwargs)  # validates the arguments
        self._sampler = template._sampler
        self._fixed_task = template._fixed_task
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.single_observation_space = template.observation_space
        self.single_action_space = template.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.tasks: Optional[list[Task]] = None
        self._tables = None
        self._values = None
        self._gens: list[np.random.Generator] = []
        n = self.num_envs
        self._envs = BatchEnvs(states=np.zeros(n, np.int64), steps=np.zeros(n, np.int64), rng=np.zeros(n, np.uint64))

    def _install(self, tasks: list[Task]) -> None:
        for task in tasks:
            check_fits(task, self.single_observation_space.n, self.single_action_space.n)
        self.tasks = tasks
        self._tables = compile_tasks(tasks)
        self._values = np.zeros(self._tables.ends.shape)
        for i, task in enumerate(tasks):
            self._values[i, : task.n_active] = oracle_values(task)

    def _given_tasks(self, given: Any) -> list[Task]:
        if isinstance(given, (list, tuple)):
            if len(given) != self.num_envs:
                raise ValueError(f"options['task'] lists {len(given)} tasks for {self.num_envs} sub-envs")
            return [as_task(t) for t in given]
        return [as_task(given)] * self.num_envs

    def reset(self, *, seed: Union[None, int, Sequence[Optional[int]]] = None, options: Optional[dict] = None):
        options = check_reset_options(options, self._sampler)
        given = None if options.get("task") is None else self._given_tasks(options["task"])
        if seed is not None or not self._gens:
            if seed is None or isinstance(seed, (int, np.integer)):
                seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
            elif len(seed) == self.num_envs:
                seeds = list(seed)
            else:
                raise ValueError(f"seed must be an int or {self.num_envs} seeds, got {len(seed)}")
            self._gens = [seeding.np_random(s)[0] for s in seeds]
            sample = self._sampler is not None and given is None
            drawn = [draw_task_and_stream(g, self._sampler, sample) for g in self._gens]
            self._envs.rng[:] = [stream[0] for _, stream in drawn]
            self._install(given or ([task for task, _ in drawn] if sample else [self._fixed_task] * self.num_envs))
        elif given is not None:
            self._install(given)
        elif options.get("new_task"):
            self._install([self._sampler(seed=g) for g in self._gens])
        out = self._outputs()
        reset_batch(self._tables, self._values, self._envs, out)
        everywhere = np.ones(self.num_envs, dtype=np.bool_)
        info = {"state": self._envs.states.copy(), "_state": everywhere, "oracle_value": out.oracle,
                "_oracle_value": everywhere}
        return out.obs, info

    def _outputs(self) -> BatchSteps:
        n = self.num_envs
        return BatchSteps(obs=np.empty(n, np.int64), rewards=np.empty(n), means=np.empty(n),
                          terminated=np.empty(n, np.bool_), truncated=np.empty(n, np.bool_), oracle=np.empty(n),
                          final_obs=np.empty(n, np.int64))

    def step(self, actions):
        if self._tables is None:
            raise ResetNeeded("step() needs reset() first: no tasks yet")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise ValueError(f"actions must be {self.num_envs} integers, got {actions.dtype} array of shape {actions.shape}")
        if actions.min() < 0 or actions.max() >= self.single_action_space.n:
            raise ValueError(f"actions must lie in [0, {self.single_action_space.n}), got {actions.min()}..{actions.max()}")
        out = self._outputs()
        step_batch(self._tables, self._values, self._envs, actions.astype(np.int64, copy=False), out)
        everywhere = np.ones(self.num_envs, dtype=np.bool_)
        info = {
            "mean_reward": out.means, "_mean_reward": everywhere,
            "state": self._envs.states.copy(), "_state": everywhere,
            "oracle_value": out.oracle, "_oracle_value": everywhere,
            "final_obs": out.final_obs, "_final_obs": out.terminated | out.truncated,
        }
        return out.obs, out.rewards, out.terminated, out.truncated, info

    def render(self) -> Optional[tuple]:
        """One frame per sub-env, as the single env renders it (the last action is not kept)."""
        if self.tasks is None:
            raise ResetNeeded("render() needs reset() first: no tasks yet")
        if self.render_mode == "ansi":
            states, steps = self._envs.states, self._envs.steps
            return tuple(render.text(t, int(s), int(k), None) for t, s, k in zip(self.tasks, states, steps))
        if self.render_mode == "rgb_array":
            images = {id(t): render.task_image(t) for t in self.tasks}
            return tuple(render.frame(images[id(t)], t.n_active, int(s)) for t, s in zip(self.tasks, self._envs.states))
        return None

