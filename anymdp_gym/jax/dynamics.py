"""AnyMDP stepping as pure JAX functions over a small pytree of task arrays: the one JAX form of
the dynamics, used by the gymnax env (``anymdp_gym.jax.env``) and by the evaluator
(``omnirl_jax.eval``), which runs the model and the env together inside one ``jax.lax.scan``.

Why a second form beside ``anymdp_gym.dynamics``: its Numba kernel cannot be called from traced
code. Tables are dense ``[n, A, n]`` arrays (a 128-state task is 1 MB), which ``jax.vmap`` batches
over a leading task axis.

Semantics follow ``anymdp_gym`` and the data schema (``omnirl_jax.data.schema``): a start state is
drawn from the start distribution; ``s' ~ transition[s, a]``;
``r ~ Normal(reward[s, a, s'], reward_noise[s, a, s'])``; ``terminated`` when ``s'`` is terminal
(every state of a one-step task, ``Task.one_step``); ``truncated`` when the episode's
``max_steps``-th action did not terminate. Randomness comes only from the ``jax.random`` key passed
in; the Numba env's SplitMix64 streams are not replayed, so the two agree in distribution
(tests/test_jax_env.py), not draw for draw.

Tasks of one batch may differ in size: ``from_tasks`` pads states (unreachable, zero rows) and
actions (``action_mask`` False; padded actions are self-loops with reward 0, so a policy that
ignores the mask still steps safely). Observations are the tasks' observation ids
(``state_mapping``), MDP tasks only.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from anymdp_gym.task import Task


class EnvParams(NamedTuple):
    """One task (or, with a leading axis, a batch of tasks) as arrays. ``max_steps_in_episode`` is
    gymnax's name for the episode limit (rejax reads it to bound its evaluation episodes)."""

    log_transition: jax.Array  # float32 [n, A, n], log-probabilities (-inf where impossible)
    reward: jax.Array  # float32 [n, A, n] mean reward of (s, a, s')
    reward_noise: jax.Array  # float32 [n, A, n] std of the Gaussian reward noise
    log_start: jax.Array  # float32 [n] log-probability of each start state
    terminal: jax.Array  # bool [n] arrival ends the episode
    obs_id: jax.Array  # int32 [n] observation id of each internal state
    max_steps_in_episode: jax.Array  # int32 []
    action_mask: jax.Array  # bool [A] actions the task really has


class EnvState(NamedTuple):
    state: jax.Array  # int32 [] internal state
    obs: jax.Array  # int32 [] its observation id
    time: jax.Array  # int32 [] actions taken in the current episode


class Step(NamedTuple):
    """What one action produced. ``next_obs`` is the observation the action led to (the terminal
    observation when ``terminated``); the returned ``EnvState`` is already reset when ``done``."""

    next_obs: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array

    @property
    def done(self):
        return self.terminated | self.truncated


def _task_arrays(task: Task, n_states: int, n_actions: int) -> EnvParams:
    """``EnvParams`` of one task as numpy arrays, padded to ``n_states`` and ``n_actions``."""
    if task.emission is not None:
        raise ValueError("the JAX AnyMDP steps MDP tasks only (this task is a POMDP)")
    n, a = task.n_active, task.n_actions
    if n_states < n or n_actions < a:
        raise ValueError(f"cannot pad a task of {n} states and {a} actions to {n_states} and {n_actions}")
    transition = np.zeros((n_states, n_actions, n_states))
    transition[:n, :a, :n] = task.transition
    for s in range(n):  # padded actions of live states: self-loops with reward 0
        transition[s, a:, s] = 0.0 if task.terminal[s] else 1.0
    reward = np.zeros_like(transition)
    reward[:n, :a, :n] = task.reward
    noise = np.zeros_like(transition)
    noise[:n, :a, :n] = task.reward_noise
    start = np.zeros(n_states)
    start[task.start_states] = task.start_probs
    terminal = np.zeros(n_states, bool)
    terminal[:n] = task.terminal | task.one_step
    obs_id = np.zeros(n_states, np.int32)
    obs_id[:n] = task.state_mapping
    with np.errstate(divide="ignore"):
        return EnvParams(
            log_transition=np.log(transition).astype(np.float32),
            reward=reward.astype(np.float32),
            reward_noise=noise.astype(np.float32),
            log_start=np.log(start).astype(np.float32),
            terminal=terminal,
            obs_id=obs_id,
            max_steps_in_episode=np.int32(task.max_steps),
            action_mask=np.arange(n_actions) < a,
        )


def from_task(task: Task, n_states: Optional[int] = None, n_actions: Optional[int] = None) -> EnvParams:
    """``EnvParams`` of one task, padded to ``n_states`` internal states and ``n_actions``."""
    n_states = task.n_active if n_states is None else n_states
    n_actions = task.n_actions if n_actions is None else n_actions
    return EnvParams(*(jnp.asarray(x) for x in _task_arrays(task, n_states, n_actions)))


def from_tasks(tasks: Sequence[Task], n_actions: Optional[int] = None) -> EnvParams:
    """A batch of tasks stacked on a leading axis, padded to the largest task (and ``n_actions``).

    Filled into one preallocated numpy array per field, then copied to the device once: 4096
    tasks of 128 states are 4 GB of tables, which a list of per-task arrays would hold twice."""
    if not tasks:
        raise ValueError("from_tasks needs at least one task")
    n = max(t.n_active for t in tasks)
    a = max(t.n_actions for t in tasks) if n_actions is None else n_actions
    first = _task_arrays(tasks[0], n, a)
    batch = EnvParams(*(np.empty((len(tasks),) + np.shape(x), np.asarray(x).dtype) for x in first))
    for i, task in enumerate(tasks):
        for field, value in zip(batch, first if i == 0 else _task_arrays(task, n, a)):
            field[i] = value
    return EnvParams(*(jnp.array(x) for x in batch))


def reset(params: EnvParams, key) -> EnvState:
    """A new episode: a start state drawn from the start distribution."""
    s = jax.random.categorical(key, params.log_start).astype(jnp.int32)
    return EnvState(state=s, obs=params.obs_id[s], time=jnp.zeros((), jnp.int32))


def _move(params: EnvParams, env: EnvState, action, k_next, k_noise) -> tuple[EnvState, Step]:
    s, a = env.state, action
    s2 = jax.random.categorical(k_next, params.log_transition[s, a]).astype(jnp.int32)
    reward = params.reward[s, a, s2] + params.reward_noise[s, a, s2] * jax.random.normal(k_noise)
    time = env.time + 1
    terminated = params.terminal[s2]
    truncated = (time >= params.max_steps_in_episode) & ~terminated
    out = Step(next_obs=params.obs_id[s2], reward=reward, terminated=terminated, truncated=truncated)
    return EnvState(state=s2, obs=out.next_obs, time=time), out


def transition(params: EnvParams, env: EnvState, action, key) -> tuple[EnvState, Step]:
    """``step`` without the reset: the same key gives the same transition (gymnax's ``step_env``)."""
    k_next, k_noise, _ = jax.random.split(key, 3)
    return _move(params, env, action, k_next, k_noise)


def step(params: EnvParams, env: EnvState, action, key) -> tuple[EnvState, Step]:
    """One action from ``env``; the returned state is reset (new episode) when the step ends one."""
    k_next, k_noise, k_reset = jax.random.split(key, 3)
    moved, out = _move(params, env, action, k_next, k_noise)
    fresh = reset(params, k_reset)
    return jax.tree.map(lambda r, m: jnp.where(out.done, r, m), fresh, moved), out


reset_batch = jax.vmap(reset)
"""``reset`` over a leading task axis of ``params`` and ``keys``."""

step_batch = jax.vmap(step)
"""``step`` over a leading task axis of every argument."""
