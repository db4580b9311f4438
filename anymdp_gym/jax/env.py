"""gymnax environments ``AnyMDP`` and ``GarnetMDP``: the Gymnasium envs' semantics, with the task
as ``EnvParams`` so that ``jax.vmap`` steps a batch of different tasks in one call.

Interface: gymnax 0.0.9's (``step`` returns ``obs, state, reward, done, info``), the one that
rejax 0.1.3, PureJaxRL-style scripts and Stoix consume. gymnax 1.0 returns ``terminated`` and
``truncated`` separately (six values) and rejax 0.1.3 then fails with "too many values to unpack
(expected 5)" (measured on CartPole-v1), hence the ``gymnax<1`` pin of the ``jax`` extra.

* spaces: observation ``Discrete(n_states)`` (the state's observation id, as ``AnyMDP-v0``),
  action ``Discrete(n_actions)``; ``OneHotObservation`` turns observations into one-hot vectors
  for a network learner.
* ``params(task)`` is one task's ``EnvParams``; ``params([tasks])`` a batch stacked on a leading
  axis (tasks of one family and size; state subsets are padded with unreachable states). Tasks
  must have exactly the env's ``n_states`` observations and ``n_actions`` actions, as in the
  Gymnasium env. ``default_params`` is the task the family's sampler draws with seed 0 (gymnax
  asks every env for one; pass your own).
* ``step`` auto-resets as gymnax does: when ``done``, the returned observation and state are
  the next episode's first; the arrival observation is ``info["final_obs"]``, and
  ``info["terminated"]`` / ``info["truncated"]`` say how the episode ended (never both: truncated
  only when the ``max_steps``-th action did not terminate, so a learner bootstraps exactly when
  truncated); ``info["discount"]`` is 0 on termination, else 1. The step is
  ``anymdp_gym.jax.dynamics.step``, the function the evaluator runs, key for key (gymnax's own
  ``step`` would spend the key differently around ``step_env``).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces
from gymnax.wrappers.purerl import GymnaxWrapper

from anymdp_gym.env import check_fits
from anymdp_gym.jax import dynamics
from anymdp_gym.jax.dynamics import EnvParams, EnvState
from anymdp_gym.sampling import check_sizes, sample_garnet_task, sample_task
from anymdp_gym.task import Task


def _info(out: dynamics.Step) -> dict:
    return {
        "discount": 1.0 - out.terminated.astype(jnp.float32),
        "terminated": out.terminated,
        "truncated": out.truncated,
        "final_obs": out.next_obs,
    }


class AnyMDP(environment.Environment):
    """AnyMDP tasks of ``n_states`` observation ids (>= 8, or 1 for a bandit) and ``n_actions``
    actions (module doc)."""

    family = "AnyMDP"

    def __init__(self, n_states: int = 16, n_actions: int = 5):
        check_sizes(n_states, n_actions)
        self.n_states, self.n_actions = int(n_states), int(n_actions)

    def sample_task(self, seed) -> Task:
        """A task of this family and size (``seed``: anything ``numpy.random.default_rng`` takes)."""
        return sample_task(self.n_states, self.n_actions, seed=seed)

    def params(self, tasks: Union[Task, Sequence[Task]]) -> EnvParams:
        """``EnvParams`` of one task, or of a sequence of tasks stacked on a leading axis."""
        batch = [tasks] if isinstance(tasks, Task) else list(tasks)
        for task in batch:
            if not isinstance(task, Task):
                raise ValueError(f"tasks must be anymdp_gym.Task objects, got {type(task).__name__}")
            check_fits(task, self.n_states, self.n_actions)
        return dynamics.from_task(tasks) if isinstance(tasks, Task) else dynamics.from_tasks(batch)

    @functools.cached_property
    def default_params(self) -> EnvParams:
        return self.params(self.sample_task(0))

    @functools.partial(jax.jit, static_argnames=("self",))
    def step(self, key, state: EnvState, action, params: Optional[EnvParams] = None):
        params = self.default_params if params is None else params
        state, out = dynamics.step(params, state, action, key)
        return state.obs, state, out.reward, out.done, _info(out)

    def step_env(self, key, state: EnvState, action, params: EnvParams):
        """``step`` without the auto-reset (the same key gives the same transition)."""
        state, out = dynamics.transition(params, state, action, key)
        return state.obs, state, out.reward, out.done, _info(out)

    def reset_env(self, key, params: EnvParams):
        state = dynamics.reset(params, key)
        return state.obs, state

    def get_obs(self, state: EnvState, params=None, key=None):
        return state.obs

    def is_terminal(self, state: EnvState, params: EnvParams):
        return params.terminal[state.state] | (state.time >= params.max_steps_in_episode)

    @property
    def name(self) -> str:
        return f"{self.family}-v0"

    @property
    def num_actions(self) -> int:
        return self.n_actions

    def action_space(self, params: Optional[EnvParams] = None) -> spaces.Discrete:
        return spaces.Discrete(self.n_actions)

    def observation_space(self, params: Optional[EnvParams] = None) -> spaces.Discrete:
        return spaces.Discrete(self.n_states)


class GarnetMDP(AnyMDP):
    """GARNET tasks (``anymdp_gym.sample_garnet_task``, its default branching and reward noise);
    ``n_states >= 8``."""

    family = "GarnetMDP"

    def __init__(self, n_states: int = 16, n_actions: int = 5):
        super().__init__(n_states, n_actions)
        if self.n_states < 8:
            raise ValueError(f"GARNET tasks need n_states >= 8, got {n_states!r}")

    def sample_task(self, seed) -> Task:
        return sample_garnet_task(self.n_states, self.n_actions, seed=seed)


class Wrapper(GymnaxWrapper):
    """gymnax's wrapper, safe to ``copy.deepcopy`` (which rejax applies to its config): gymnax's
    attribute forwarding recurses forever there, where the copy is asked for attributes before
    it has ``_env``."""

    def __getattr__(self, name):
        if name == "_env":
            raise AttributeError(name)
        return getattr(self._env, name)


class OneHotObservation(Wrapper):
    """Observations of a ``Discrete(n)`` env as one-hot float32 vectors (``Box(0, 1, (n,))``):
    the input an MLP learner (rejax, PureJaxRL) needs, where an id fed as a number would impose
    an order the task does not have."""

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self._env.observation_space(params).n,), jnp.float32)

    def _one_hot(self, obs, params):
        return jax.nn.one_hot(obs, self._env.observation_space(params).n, dtype=jnp.float32)

    @functools.partial(jax.jit, static_argnames=("self",))
    def reset(self, key, params=None):
        obs, state = self._env.reset(key, params)
        return self._one_hot(obs, params), state

    @functools.partial(jax.jit, static_argnames=("self",))
    def step(self, key, state, action, params=None):
        obs, state, reward, done, info = self._env.step(key, state, action, params)
        return self._one_hot(obs, params), state, reward, done, info
