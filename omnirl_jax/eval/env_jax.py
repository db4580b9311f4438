"""AnyMDP stepping as pure JAX functions over a small pytree of task arrays.

Why: evaluation runs the model and the environment together inside one ``jax.lax.scan`` on the
device, for many tasks at once (``jax.vmap`` over a leading task axis). The Numba kernel of
``anymdp_gym.dynamics`` cannot be called from traced code, so the same dynamics are written here
once more, for evaluation sizes: dense ``[n, A, n]`` tables (a 128-state task is 0.3 MB).

Semantics follow ``anymdp_gym`` and the data schema (``omnirl_jax.data.schema``): a start state is
drawn from the start distribution; ``s' ~ transition[s, a]``;
``r ~ Normal(reward[s, a, s'], reward_noise[s, a, s'])``; ``terminated`` when ``s'`` is terminal;
``truncated`` when the episode's ``max_steps``-th action did not terminate. Randomness comes only
from the ``jax.random`` key passed in.

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
    """One task (or, with a leading axis, a batch of tasks) as arrays."""

    log_transition: jax.Array  # float32 [n, A, n], log-probabilities (-inf where impossible)
    reward: jax.Array  # float32 [n, A, n] mean reward of (s, a, s')
    reward_noise: jax.Array  # float32 [n, A, n] std of the Gaussian reward noise
    log_start: jax.Array  # float32 [n] log-probability of each start state
    terminal: jax.Array  # bool [n]
    obs_id: jax.Array  # int32 [n] observation id of each internal state
    max_steps: jax.Array  # int32 []
    action_mask: jax.Array  # bool [A] actions the task really has


class EnvState(NamedTuple):
    state: jax.Array  # int32 [] internal state
    obs: jax.Array  # int32 [] its observation id
    steps: jax.Array  # int32 [] actions taken in the current episode


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


def from_task(task: Task, n_states: Optional[int] = None, n_actions: Optional[int] = None) -> EnvParams:
    """``EnvParams`` of one task, padded to ``n_states`` internal states and ``n_actions``."""
    if task.emission is not None:
        raise ValueError("env_jax steps MDP tasks only (this task is a POMDP)")
    n, a = task.n_active, task.n_actions
    n_states = n if n_states is None else n_states
    n_actions = a if n_actions is None else n_actions
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
    terminal[:n] = task.terminal
    obs_id = np.zeros(n_states, np.int32)
    obs_id[:n] = task.state_mapping
    with np.errstate(divide="ignore"):
        return EnvParams(
            log_transition=jnp.asarray(np.log(transition), jnp.float32),
            reward=jnp.asarray(reward, jnp.float32),
            reward_noise=jnp.asarray(noise, jnp.float32),
            log_start=jnp.asarray(np.log(start), jnp.float32),
            terminal=jnp.asarray(terminal),
            obs_id=jnp.asarray(obs_id),
            max_steps=jnp.asarray(task.max_steps, jnp.int32),
            action_mask=jnp.asarray(np.arange(n_actions) < a),
        )


def from_tasks(tasks: Sequence[Task], n_actions: Optional[int] = None) -> EnvParams:
    """A batch of tasks stacked on a leading axis, padded to the largest task (and ``n_actions``)."""
    if not tasks:
        raise ValueError("from_tasks needs at least one task")
    n = max(t.n_active for t in tasks)
    a = max(t.n_actions for t in tasks) if n_actions is None else n_actions
    return jax.tree.map(lambda *xs: jnp.stack(xs), *(from_task(t, n, a) for t in tasks))


def reset(params: EnvParams, key) -> EnvState:
    """A new episode: a start state drawn from the start distribution."""
    s = jax.random.categorical(key, params.log_start).astype(jnp.int32)
    return EnvState(state=s, obs=params.obs_id[s], steps=jnp.zeros((), jnp.int32))


def step(params: EnvParams, env: EnvState, action, key) -> tuple[EnvState, Step]:
    """One action from ``env``; the returned state is reset (new episode) when the step ends one."""
    k_next, k_noise, k_reset = jax.random.split(key, 3)
    s, a = env.state, action
    s2 = jax.random.categorical(k_next, params.log_transition[s, a]).astype(jnp.int32)
    reward = params.reward[s, a, s2] + params.reward_noise[s, a, s2] * jax.random.normal(k_noise)
    steps = env.steps + 1
    terminated = params.terminal[s2]
    truncated = (steps >= params.max_steps) & ~terminated
    out = Step(next_obs=params.obs_id[s2], reward=reward, terminated=terminated, truncated=truncated)
    fresh = reset(params, k_reset)
    moved = EnvState(state=s2, obs=out.next_obs, steps=steps)
    return jax.tree.map(lambda r, m: jnp.where(out.done, r, m), fresh, moved), out


reset_batch = jax.vmap(reset)
"""``reset`` over a leading task axis of ``params`` and ``keys``."""

step_batch = jax.vmap(step)
"""``step`` over a leading task axis of every argument."""
