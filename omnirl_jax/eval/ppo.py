"""The ``ppo`` baseline: rejax's PPO trained from scratch on each task's gymnax env
(``anymdp_gym.jax``), for the suite's budget of interaction steps; its curve is the return of the
episodes it plays *while it trains* (an online learning curve, as the model's and the tabular
learners' are), not a separate evaluation of its policy.

Why a recording wrapper: rejax's ``train`` runs its iterations inside a ``lax.fori_loop`` and
returns only periodic evaluations, never the steps it trained on. ``Record`` is a gymnax
wrapper whose state carries a log of the rewards and episode ends of the first ``n_steps``
steps it is stepped through; after training, the env state rejax hands back holds the agent's
own experience. rejax's evaluations are switched off (each would play 128 extra episodes that
no curve uses). The tasks of a group are trained under one ``jax.vmap``.

Tasks: a table task runs as ``anymdp_gym.jax.AnyMDP`` (the evaluator's own dynamics). A live
task (``live``) runs as gymnax's JAX port of its Gymnasium env (``MountainCar-v0``,
``Pendulum-v1`` with the suite's ``g``) behind ``Discretised``, the same observation bins,
torques and relabelling as the suite's Gymnasium wrappers (read from them); its episodes start
from JAX keys, not from the instance's Gymnasium seed, so PPO meets the same start distribution
as the other agents, not the same draws. gymnax reports truncation at 200 steps as ``done``,
which is all a curve needs.

Settings, fixed for every task and suite (not tuned per task):

* one env (``num_envs`` 1): PPO's experience is a single stream of interaction with the task, as
  every other agent's, so the budget and the windows mean the same for all;
* rollouts of 64 steps, 4 epochs of 4 minibatches, learning rate 0.01, no entropy bonus,
  observations one-hot (``OneHotObservation``): the settings with which this PPO learned an
  AnyMDP task (tests/test_jax_env.py, docs/experiments.md, issue 28: 0.91 normalised after 131k
  steps), with one env instead of 64;
* everything else rejax 0.1.3's defaults: gamma 0.99, GAE lambda 0.95, clip 0.2, value
  coefficient 0.5, no gradient clipping, actor and critic MLPs of two 64-unit swish layers.

Compiled at XLA's backend optimisation level 0: on this project's 2-core CPU that compiles
rejax's training loop in 9 s instead of 26 s, and runs it 2.4x slower (2 Dark Room tasks x
2048 steps: 1.0 s against 0.4 s). A saving wherever the run itself is short: the tests, Dark
Room (16 tasks x 2048 steps, 4.2 s) and the live suites (8 x 8192, about 16 s); on the largest
AnyMDP suites the run dominates and level 0 costs more than it saves.

PPO updates after each 64-step rollout, so a budget that is not a multiple of 64 trains on a
last, partial rollout's worth of extra steps that are not recorded; the recorded steps are
exactly the first ``n_steps`` (nothing after a step can change it). PPO is on-policy and cannot
learn from another policy's records: it ignores the offline and imitation contexts (it is
played once per group and scored in every mode, as ``random``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import gymnasium as gym
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces
from rejax import PPO

from anymdp_gym.jax import AnyMDP, OneHotObservation
from anymdp_gym.jax.env import Wrapper
from anymdp_gym.wrappers import DiscretiseActions, DiscretiseObservation, PendulumAngle

SETTINGS = dict(num_envs=1, num_steps=64, num_epochs=4, num_minibatches=4, learning_rate=1e-2, ent_coef=0.0)
"""rejax ``PPO.create`` arguments beside the env and the budget (module doc)."""
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
"""XLA options of the training loop's compilation (module doc)."""


class Steps(NamedTuple):
    """``[..., n_steps]`` rewards and episode ends of PPO's own play."""

    reward: jax.Array
    done: jax.Array


class RecordState(NamedTuple):
    env: Any
    t: jax.Array  # steps taken so far
    log: Steps  # [n_steps] per field


class Record(Wrapper):
    """Logs the rewards and episode ends of the first ``n_steps`` steps into its state (module doc)."""

    def __init__(self, env, n_steps: int):
        super().__init__(env)
        self.n_steps = n_steps

    @functools.partial(jax.jit, static_argnames=("self",))
    def reset(self, key, params=None):
        obs, state = self._env.reset(key, params)
        log = Steps(jnp.zeros(self.n_steps, jnp.float32), jnp.zeros(self.n_steps, bool))
        return obs, RecordState(state, jnp.zeros((), jnp.int32), log)

    @functools.partial(jax.jit, static_argnames=("self",))
    def step(self, key, state: RecordState, action, params=None):
        obs, env, reward, done, info = self._env.step(key, state.env, action, params)
        log = Steps(*(f.at[state.t].set(v, mode="drop") for f, v in zip(state.log, (reward, done))))  # past n_steps: dropped
        return obs, RecordState(env, state.t + 1, log), reward, done, info


class LiveParams(NamedTuple):
    physics: Any  # the gymnax env's EnvParams
    mapping: jax.Array  # int32 [ids]: the instance's relabelling, env id -> model id


class Discretised(Wrapper):
    """gymnax's port of a live task's Gymnasium env, observed and acted on as the suite's
    discretised Gymnasium env is (``live``): ids ``mapping[bin]`` in ``Discrete(n_obs)``,
    actions ``Discrete`` (torques where the Gymnasium env has ``DiscretiseActions``)."""

    def __init__(self, task, n_obs: int):
        gym_env = task.make()
        try:
            chain = [gym_env]
            while isinstance(chain[-1], gym.Wrapper):
                chain.append(chain[-1].env)
            bins = next(w for w in chain if isinstance(w, DiscretiseObservation))
            torques = [w.values for w in chain if isinstance(w, DiscretiseActions)]
            self.angle = any(isinstance(w, PendulumAngle) for w in chain)
            base = gym_env.unwrapped
            env, physics = gymnax.make(gym_env.spec.id)
        finally:
            gym_env.close()
        super().__init__(env)
        self.bins = tuple(int(b) for b in bins.bins)
        self.low, self.high = (np.asarray(x, np.float32) for x in (bins.low, bins.high))
        self.torques = np.asarray(torques[0], np.float32) if torques else None
        self.n_actions, self.n_obs = int(gym_env.action_space.n), n_obs
        self.physics = physics.replace(g=float(base.g)) if hasattr(physics, "g") else physics

    def params(self, mappings: np.ndarray) -> LiveParams:
        """``LiveParams`` of a batch of instances, from their ``[B, ids]`` relabellings."""
        batch = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (len(mappings),) + jnp.shape(x)), self.physics)
        return LiveParams(batch, jnp.asarray(mappings, jnp.int32))

    @property
    def default_params(self):  # rejax asks for one before it is given the instances'
        return LiveParams(self.physics, jnp.arange(int(np.prod(self.bins)), dtype=jnp.int32))

    def _id(self, obs, params: LiveParams):
        if self.angle:
            obs = jnp.stack([jnp.arctan2(obs[1], obs[0]) % (2 * jnp.pi), obs[2]])
        x = jnp.clip(obs, self.low, self.high)
        bins = np.array(self.bins)
        index = jnp.minimum(jnp.floor((x - self.low) / (self.high - self.low) * bins), bins - 1).astype(jnp.int32)
        return params.mapping[jnp.ravel_multi_index(tuple(index), self.bins, mode="clip")]

    @functools.partial(jax.jit, static_argnames=("self",))
    def reset(self, key, params: LiveParams):
        obs, state = self._env.reset(key, params.physics)
        return self._id(obs, params), state

    @functools.partial(jax.jit, static_argnames=("self",))
    def step(self, key, state, action, params: LiveParams):
        applied = action if self.torques is None else jnp.asarray(self.torques)[action][None]
        obs, state, reward, done, info = self._env.step(key, state, applied, params.physics)
        return self._id(obs, params), state, reward, done, info

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.n_actions)

    def observation_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.n_obs)


@functools.lru_cache(maxsize=8)
def table_env(n_obs: int, n_actions: int) -> AnyMDP:
    return AnyMDP(n_obs, n_actions)


@functools.lru_cache(maxsize=8)
def live_env(task, n_obs: int) -> Discretised:
    return Discretised(task, n_obs)


@functools.lru_cache(maxsize=8)
def _trainer(env, n_steps: int):
    """The jitted ``(params [B], keys [B]) -> Steps [B, n_steps]`` of PPO on ``env``'s tasks."""
    env = OneHotObservation(Record(env, n_steps))
    rollout = SETTINGS["num_envs"] * SETTINGS["num_steps"]
    total = -(-n_steps // rollout) * rollout
    algo = PPO.create(env=env, total_timesteps=total, eval_freq=total, skip_initial_evaluation=True, **SETTINGS)
    algo = algo.replace(eval_callback=lambda algo, ts, key: ())

    def train(params, key):
        ts, _ = algo.replace(env_params=params).train(key)
        return jax.tree.map(lambda x: x[0], ts.env_state.log)  # the one env

    return jax.jit(jax.vmap(train), compiler_options=COMPILER_OPTIONS)


def ppo_baseline(env, params, key, n_steps: int) -> Steps:
    """``[B, n_steps]`` steps of PPO learning each task of the batch ``params`` of ``env``
    (``table_env`` or ``live_env``)."""
    keys = jax.random.split(key, jax.tree.leaves(params)[0].shape[0])
    return _trainer(env, n_steps)(params, keys)
