"""Fast rollouts: the model (or a fixed behaviour policy) and ``env_jax`` stepped together in one
``jax.lax.scan``, over a batch of tasks.

The model is stepped with its recurrent state, never re-reading its context. For step ``t`` of
the online loop:

1. if the previous action ended an episode by termination, the terminal observation is fed as
   its own record (null action, reward 0, the last tag), as in the training data; a truncated
   episode gets no such record, nor does a pull of a one-step task (a bandit): the rule is
   ``schema.terminal_record_follows``;
2. the model is called on a one-step batch holding the real prompt, observation and tag and
   placeholders for action and reward (the null action and 0). The policy head reads the
   observation token, which comes before the action and reward tokens, so the placeholders
   cannot leak into the logits; the carry of this call is discarded;
3. an action is drawn from the logits (masked to the task's actions) as ``Sampling`` says, the env steps;
4. the model is called again on the real step (prompt, observation, tag, action, reward) to
   advance the carry.

So one step costs three model calls at most, and memory does not grow with the number of steps.
``ModelRunner.act`` makes the same calls for an agent driven from outside (``omnirl_jax.agent``),
in the order its steps arrive: the last step's record and terminal record, then the next action.
Table policies with epsilon noise (the random and oracle baselines, the behaviour policies of the
offline and imitation contexts) run through ``table_rollout`` and ``behaviour_records``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from anymdp_gym.jax import dynamics as env_jax
from omnirl_jax.data.schema import TAG_ID, terminal_record_follows

PROMPT = TAG_ID["opt3"]
"""Prompt of every evaluation step: ask for the policy the model was distilled from (opt3)."""

_MASKED = -1e9


class Records(NamedTuple):
    """``[B, T]`` step records in the schema's layout, plus what a learner needs to update."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    tag: jax.Array
    next_obs: jax.Array  # observation the action led to (meaningless on terminal records)
    terminated: jax.Array
    truncated: jax.Array

    def model_batch(self) -> dict:
        return {"prompt": jnp.full_like(self.obs, PROMPT), "obs": self.obs, "tag": self.tag,
                "action": self.action, "reward": self.reward}


class Trajectory(NamedTuple):
    """``[B, T]`` per interaction step (terminal records are not interaction steps)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminated: jax.Array
    truncated: jax.Array

    @property
    def done(self):
        """The step ended an episode."""
        return self.terminated | self.truncated


class Sampling(NamedTuple):
    """How the model's actions are drawn along a context (``EvalConfig.temperature``,
    ``gather_steps`` and ``untried_first``): at temperature 1, the distribution it was trained to
    output, for the first ``gather_steps`` interaction steps, then at ``temperature`` (0: greedy);
    with ``untried_first``, a gathering step draws only among the actions not yet taken in the
    current observation (counted from the context's first interaction step) while it has any."""

    temperature: float = 1.0
    gather_steps: int = 0
    untried_first: bool = False

    @classmethod
    def of(cls, eval_cfg, temperature: float | None = None, gather_steps: int | None = None,
           untried_first: bool | None = None) -> "Sampling":
        """A run's ``EvalConfig`` sampling, with each value given here (not None) in its place."""
        return cls(float(eval_cfg.temperature if temperature is None else temperature),
                   int(eval_cfg.gather_steps if gather_steps is None else gather_steps),
                   bool(eval_cfg.untried_first if untried_first is None else untried_first))

    def temperature_at(self, step: int) -> float:
        """The temperature of interaction step ``step`` (from 0) of a context."""
        return 1.0 if step < self.gather_steps else self.temperature

    def untried_only_at(self, step: int) -> bool:
        """Whether interaction step ``step`` draws among untried actions only (where any is left)."""
        return self.untried_first and step < self.gather_steps


def untried_mask(action_mask, tried):
    """``[B, A]``: the task's actions not in ``tried [B, A]``, or all of them where none is left."""
    untried = action_mask & ~tried
    return jnp.where(jnp.any(untried, axis=-1, keepdims=True), untried, action_mask)


def sample_action(key, logits, action_mask, temperature: float):
    """An action from ``logits`` restricted to ``action_mask``; greedy when ``temperature == 0``."""
    logits = jnp.where(action_mask, logits, _MASKED)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature).astype(jnp.int32)


class ModelRunner:
    """Steps a restored OmniRL model on a batch of tasks (module doc).

    ``graphdef`` must be built with ``remat=False`` (``nnx.remat`` cannot run inside the loop's
    ``lax.cond``); for GLA, ``chunk_size = ModelConfig.tokens_per_step`` makes a one-step call pad nothing
    (``evaluate.load_model`` builds it so)."""

    def __init__(self, graphdef: Any, params: Any, n_actions: int):
        self.graphdef, self.params, self.n_actions = graphdef, params, n_actions
        self._prefill = jax.jit(self._prefill_impl)
        self._rollout = jax.jit(self._rollout_impl, static_argnames=("n_steps", "sampling"))
        self._act = jax.jit(self._act_impl, static_argnames=("temperature",))
        self._absorb = jax.jit(self._absorb_impl)

    def _apply(self, params, batch, carry):
        return nnx.merge(self.graphdef, params)(batch, carry)

    def init_carry(self, batch: int):
        return nnx.merge(self.graphdef, self.params).init_carry(batch)

    def prefill(self, carry, records: Records):
        """The carry after reading a context of records (one pass over the whole context)."""
        return self._prefill(self.params, carry, records.model_batch())

    def _prefill_impl(self, params, carry, batch):
        return self._apply(params, batch, carry)[1]

    def rollout(self, carry, env_params: env_jax.EnvParams, key, *, n_steps: int, tag: int,
                sampling: Sampling = Sampling()) -> tuple[Trajectory, Any]:
        """``n_steps`` interaction steps on every task of ``env_params`` (a fresh episode each),
        the model's own steps tagged ``tag``, its actions drawn as ``sampling`` says (its gathering
        steps counted from this call's first step). Returns the trajectory and the final carry."""
        sampling = Sampling(float(sampling.temperature), int(sampling.gather_steps), bool(sampling.untried_first))
        return self._rollout(self.params, carry, env_params, key, jnp.int32(tag), n_steps=n_steps, sampling=sampling)

    def act(self, carry, previous: "PendingStep", obs, key, tag, action_mask, *, temperature: float):
        """One step of an agent driven from outside (``omnirl_jax.agent``), as one jitted call:
        ``previous`` (the last step's record, and its terminal record where it terminated) is
        read into ``carry``, then an action for ``obs [B]`` is drawn. Returns ``(action [B],
        carry)``; the carry has read ``previous``, not yet this step."""
        return self._act(self.params, carry, previous, obs, key, tag, action_mask, temperature=float(temperature))

    def absorb(self, carry, previous: "PendingStep", tag):
        """``carry`` after reading ``previous`` (as ``act`` does first), with no new action."""
        return self._absorb(self.params, carry, previous, tag)

    @staticmethod
    def _record(obs, action, reward, tags) -> dict:
        """A one-step batch of the model's fields for ``[B]`` arrays."""
        return {"prompt": jnp.full_like(tags, PROMPT), "obs": obs[:, None], "tag": tags,
                "action": action[:, None], "reward": reward[:, None]}

    def _feed(self, params, carry, batch, rows):
        """``carry`` advanced by ``batch`` in the rows where ``rows [B]`` is true (skipped when none is)."""

        def advance(carry):
            _, advanced = self._apply(params, batch, carry)
            mask = lambda x: rows.reshape((-1,) + (1,) * (x.ndim - 1))
            return jax.tree.map(lambda new, old: jnp.where(mask(new), new, old), advanced, carry)

        return jax.lax.cond(jnp.any(rows), advance, lambda c: c, carry)

    def _policy_logits(self, params, carry, obs, tags):
        """``[B, A]`` logits for observations ``obs [B]`` (placeholders for action and reward,
        which the policy head cannot see); the carry of this call is discarded."""
        null = jnp.full_like(obs, self.n_actions)
        outputs, _ = self._apply(params, self._record(obs, null, jnp.zeros(obs.shape, jnp.float32), tags), carry)
        return outputs["policy_logits"][:, 0]

    def _absorb_impl(self, params, carry, previous, tag):
        tags = jnp.full((previous.obs.shape[0], 1), tag, jnp.int32)
        carry = self._feed(params, carry, self._record(previous.obs, previous.action, previous.reward, tags),
                           previous.valid)
        null = jnp.full_like(previous.obs, self.n_actions)
        terminal = self._record(previous.next_obs, null, jnp.zeros(previous.obs.shape, jnp.float32), tags)
        return self._feed(params, carry, terminal, previous.valid & previous.terminated)

    def _act_impl(self, params, carry, previous, obs, key, tag, action_mask, *, temperature):
        carry = self._absorb_impl(params, carry, previous, tag)
        tags = jnp.full((obs.shape[0], 1), tag, jnp.int32)
        action = sample_action(key, self._policy_logits(params, carry, obs, tags), action_mask, temperature)
        return action, carry

    def _rollout_impl(self, params, carry, env_params, key, tag, *, n_steps, sampling):
        batch_size = env_params.max_steps_in_episode.shape[0]
        key, k_reset = jax.random.split(key)
        env = env_jax.reset_batch(env_params, jax.random.split(k_reset, batch_size))
        null = jnp.full((batch_size,), self.n_actions, jnp.int32)
        tags = jnp.full((batch_size, 1), tag, jnp.int32)
        zeros = jnp.zeros((batch_size,), jnp.float32)

        rows = jnp.arange(batch_size)

        def body(state, xs):
            key, step = xs
            carry, env, pending, terminal_obs, tried = state
            carry = self._feed(params, carry, self._record(terminal_obs, null, zeros, tags), pending)
            logits = self._policy_logits(params, carry, env.obs, tags)
            k_act, k_env = jax.random.split(key)
            action = sample_action(k_act, logits, env_params.action_mask, sampling.temperature)
            if sampling.gather_steps:
                # tried is keyed on the internal state: the same as the observation (state_mapping is one-to-one)
                mask = untried_mask(env_params.action_mask, tried[rows, env.state]) if sampling.untried_first \
                    else env_params.action_mask
                gathering = sample_action(k_act, logits, mask, 1.0)
                action = jnp.where(step < sampling.gather_steps, gathering, action)
            if sampling.untried_first:  # the only reader of tried: no scatter per step otherwise
                tried = tried.at[rows, env.state, action].set(True)
            obs = env.obs
            env, out = env_jax.step_batch(env_params, env, action, jax.random.split(k_env, batch_size))
            _, carry = self._apply(params, self._record(obs, action, out.reward, tags), carry)
            pending = terminal_record_follows(out.terminated, env_params.max_steps_in_episode)
            return (carry, env, pending, out.next_obs, tried), Trajectory(obs, action, out.reward, out.next_obs,
                                                                   out.terminated, out.truncated)

        tried = jnp.zeros(env_params.log_transition.shape[:3], bool)  # [B, states, actions]
        init = (carry, env, jnp.zeros(batch_size, bool), env.obs, tried)
        (carry, *_), traj = jax.lax.scan(body, init, (jax.random.split(key, n_steps), jnp.arange(n_steps)))
        return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), traj), carry


class PendingStep(NamedTuple):
    """``[B]`` the step an agent took last, not yet read by the model (``valid`` false where
    there is none: before the first action, after a new task)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminated: jax.Array
    valid: jax.Array

    @classmethod
    def none(cls, batch: int) -> "PendingStep":
        zeros = jnp.zeros((batch,), jnp.int32)
        return cls(zeros, zeros, jnp.zeros((batch,), jnp.float32), zeros, jnp.zeros((batch,), bool),
                   jnp.zeros((batch,), bool))


def _table_action(params: env_jax.EnvParams, greedy, eps, greedy_tag, obs, key):
    """Epsilon-greedy over a table: ``(action, tag)``; a random action is tagged ``rnd``."""
    k_eps, k_rand = jax.random.split(key)
    explore = jax.random.uniform(k_eps) < eps
    random = jax.random.categorical(k_rand, jnp.where(params.action_mask, 0.0, _MASKED)).astype(jnp.int32)
    action = jnp.where(explore, random, greedy[obs]).astype(jnp.int32)
    return action, jnp.where(explore, TAG_ID["rnd"], greedy_tag).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("n_steps",))
def table_rollout(env_params: env_jax.EnvParams, greedy, eps, key, *, n_steps: int) -> Trajectory:
    """``n_steps`` interaction steps per task of an epsilon-greedy table policy (``greedy
    [B, n_obs]`` action per observation id, noise ``eps [B]``): the random and oracle baselines."""

    def one_task(params, greedy, eps, key):
        key, k_reset = jax.random.split(key)

        def body(env, key):
            k_act, k_env = jax.random.split(key)
            action, _ = _table_action(params, greedy, eps, 0, env.obs, k_act)
            new_env, out = env_jax.step(params, env, action, k_env)
            return new_env, Trajectory(env.obs, action, out.reward, out.next_obs, out.terminated, out.truncated)

        return jax.lax.scan(body, env_jax.reset(params, k_reset), jax.random.split(key, n_steps))[1]

    return jax.vmap(one_task)(env_params, greedy, eps, jax.random.split(key, greedy.shape[0]))


@functools.partial(jax.jit, static_argnames=("n_records",))
def behaviour_records(env_params: env_jax.EnvParams, greedy, eps, greedy_tag, key, *, n_records: int) -> Records:
    """``n_records`` schema records per task of an epsilon-greedy table policy: the context of the
    offline and imitation modes.

    As ``table_rollout``; a random step is tagged ``rnd``, a greedy one ``greedy_tag [B]`` (so a
    noisy oracle is tagged as the generator tags it). Episodes run back to back from a fresh
    reset, each terminal observation recorded with the null action as in the training data.
    """
    null = env_params.action_mask.shape[-1]

    def one_task(params, greedy, eps, greedy_tag, key):
        key, k_reset = jax.random.split(key)

        def body(state, key):
            env, pending, terminal_obs, last_tag = state
            k_act, k_env = jax.random.split(key)
            action, tag = _table_action(params, greedy, eps, greedy_tag, env.obs, k_act)
            new_env, out = env_jax.step(params, env, action, k_env)
            acted = Records(env.obs, action, out.reward, tag, out.next_obs, out.terminated, out.truncated)
            terminal = Records(terminal_obs, jnp.int32(null), jnp.float32(0.0), last_tag, terminal_obs,
                               jnp.bool_(False), jnp.bool_(False))
            record = jax.tree.map(lambda t, a: jnp.where(pending, t, a), terminal, acted)
            env = jax.tree.map(lambda old, new: jnp.where(pending, old, new), env, new_env)
            follows = ~pending & terminal_record_follows(out.terminated, params.max_steps_in_episode)
            state = (env, follows, jnp.where(pending, terminal_obs, out.next_obs), jnp.where(pending, last_tag, tag))
            return state, record

        env = env_jax.reset(params, k_reset)
        init = (env, jnp.bool_(False), env.obs, jnp.int32(TAG_ID["unk"]))
        return jax.lax.scan(body, init, jax.random.split(key, n_records))[1]

    return jax.vmap(one_task)(env_params, greedy, eps, greedy_tag, jax.random.split(key, greedy.shape[0]))
