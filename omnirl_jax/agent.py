"""``InContextAgent``: a trained OmniRL checkpoint as an agent in any Gymnasium loop.

::

    agent = InContextAgent.load("runs/cpu", env.observation_space, env.action_space, seed=0)
    obs, info = env.reset(seed=0)
    for _ in range(500):
        action = agent.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        agent.observe(reward, obs, terminated, truncated)
        if terminated or truncated:
            obs, info = env.reset()
    agent.reset_task()  # before playing another task

The agent learns in context: every step of every episode since the last ``reset_task`` is in
its recurrent state, so a new episode of the same task is played with what the earlier ones
taught it. ``act(obs)`` returns an action for the current observation; ``observe(reward,
next_obs, terminated, truncated)`` reports what ``env.step`` returned for it (``next_obs`` is
read only when ``terminated``: the terminal observation becomes its own record, as in the
training data, except for a model trained on one-step tasks (bandits), whose data holds none;
after an episode ends the next ``act`` gets the reset observation).
``reset_task()`` empties the context. Calls must alternate ``act``, ``observe``, ``act``, ...

Each ``act`` is one jitted call (``rollout.ModelRunner.act``): it reads the previous step (and
its terminal record) into the carried state, then draws an action, with the very same model
calls as ``omnirl-eval``'s batched rollout, so both give the same outputs on the same inputs
(tested). Actions are drawn from the policy head's softmax at ``temperature`` (0: greedy),
the first ``gather_steps`` of a task at 1, among the actions untried in the observation first
with ``untried_first`` (``rollout.Sampling``), keyed by ``(seed, step
count)``: a seed replays a run. ``num_envs=B`` plays ``B`` environments in lockstep (``act``
then takes and returns ``[B]`` arrays), one jitted call for all of them: envs stepped one by one,
or a Gymnasium vector env in ``AutoresetMode.SAME_STEP`` with ``info["final_obs"]`` as
``next_obs`` where an episode ended (in the default next-step mode the
step after an episode's end is a reset, not an action, and must not be reported).

Spaces: observations must be ``Discrete(n)`` with ``n`` at most the model's observation ids
(its config's ``data.generator.n_states``), any other id is refused; a ``Box`` observation goes through
``anymdp_gym.wrappers.DiscretiseObservation`` first. Actions must be ``Discrete(k)`` with ``k``
at most the model's actions; the model's surplus actions are masked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

from omnirl_jax.data.schema import TAG_ID
from omnirl_jax.eval.restore import LoadedModel, load_model
from omnirl_jax.eval.rollout import PendingStep, Sampling, untried_mask


class InContextAgent:
    """A restored model acting in ``num_envs`` environments (module doc)."""

    TAG = TAG_ID["unk"]
    """Tag of the agent's own steps, as in ``omnirl-eval``'s online mode."""

    def __init__(self, model: LoadedModel, observation_space: spaces.Space, action_space: spaces.Space, *,
                 num_envs: Optional[int] = None, temperature: float = 1.0, gather_steps: int = 0,
                 untried_first: bool = False, seed: int = 0):
        self.n_obs = _discrete_size(observation_space, "observation", model.n_states)
        self.n_actions = _discrete_size(action_space, "action", model.n_actions)
        if self.n_actions < 2:
            raise ValueError(f"the action space {action_space} has fewer than 2 actions")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if gather_steps < 0:
            raise ValueError(f"gather_steps must be >= 0, got {gather_steps}")
        if num_envs is not None and num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.model, self.runner = model, model.runner
        # A model trained on one-step tasks never saw a terminal record: feed none.
        self._terminal_records = not model.config.data.generator.one_step
        self.num_envs, self.sampling = num_envs, Sampling(float(temperature), int(gather_steps), bool(untried_first))
        self._batch = 1 if num_envs is None else int(num_envs)
        self._key = jax.random.key(seed)
        self._mask = jnp.arange(model.n_actions) < self.n_actions
        self.reset_task()

    @classmethod
    def load(cls, checkpoint: str | Path, observation_space: spaces.Space, action_space: spaces.Space, *,
             step: Optional[int] = None, num_envs: Optional[int] = None, temperature: float = 1.0,
             gather_steps: int = 0, untried_first: bool = False, seed: int = 0,
             warn: Callable[[str], None] = print) -> "InContextAgent":
        """The agent of a training run's workdir (``omnirl-train --workdir``), its newest intact
        checkpoint or ``step``; ``restore.EvalError`` with one line if it cannot be read."""
        return cls(load_model(checkpoint, step, warn=warn), observation_space, action_space, num_envs=num_envs,
                   temperature=temperature, gather_steps=gather_steps, untried_first=untried_first, seed=seed)

    def reset_task(self) -> None:
        """Forgets every step so far: the next ``act`` starts a new task from an empty context."""
        self._pending = PendingStep.none(self._batch)
        # Through the model once, so the carry has the layout ``act`` returns (one compile, not two).
        self._carry = self.runner.absorb(self.runner.init_carry(self._batch), self._pending, self.TAG)
        self._acted: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._tried = np.zeros((self._batch, self.n_obs, self._mask.shape[0]), bool)
        self.steps = 0

    def act(self, obs):
        """The action for observation ``obs`` (an int, or ``[num_envs]`` ids)."""
        if self._acted is not None:
            raise RuntimeError("act() called twice without observe(): report each step's outcome first")
        ids = self._ids(obs, "observation")
        key = jax.random.fold_in(self._key, self.steps)
        rows = np.arange(self._batch)
        mask = jnp.broadcast_to(self._mask, (self._batch, self._mask.shape[0]))
        if self.sampling.untried_only_at(self.steps):
            mask = untried_mask(mask, jnp.asarray(self._tried[rows, ids]))
        action, self._carry = self.runner.act(self._carry, self._pending, jnp.asarray(ids), key, self.TAG, mask,
                                              temperature=self.sampling.temperature_at(self.steps))
        action = np.asarray(action)
        self._tried[rows, ids, action] = True
        self._acted = (ids, action)
        self.steps += 1
        return int(action[0]) if self.num_envs is None else action

    def observe(self, reward, next_obs, terminated, truncated) -> None:
        """What ``env.step`` returned for the last ``act`` (``truncated`` ends the episode with no
        terminal record; it is accepted for Gymnasium's order of values)."""
        if self._acted is None:
            raise RuntimeError("observe() called before act()")
        ids, action = self._acted
        terminated = np.broadcast_to(np.asarray(terminated, bool), (self._batch,)) & self._terminal_records
        next_ids = self._ids(next_obs, "next observation") if terminated.any() else np.zeros_like(ids)
        self._pending = PendingStep(
            obs=jnp.asarray(ids), action=jnp.asarray(action, jnp.int32),
            reward=jnp.asarray(np.broadcast_to(np.asarray(reward, np.float32), (self._batch,))),
            next_obs=jnp.asarray(next_ids), terminated=jnp.asarray(terminated), valid=jnp.ones((self._batch,), bool))
        self._acted = None

    @property
    def carry(self):
        """The recurrent state after every step observed so far."""
        return self.runner.absorb(self._carry, self._pending, self.TAG)

    def _ids(self, obs, what: str) -> np.ndarray:
        ids = np.asarray(obs)
        shape = () if self.num_envs is None else (self.num_envs,)
        if ids.shape != shape or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{what} must be {'an int' if not shape else f'{shape[0]} ints'}, got {obs!r}")
        n = self.model.n_states
        bad = ids[(ids < 0) | (ids >= n)]
        if bad.size:
            raise ValueError(f"{what} id {int(bad.flat[0])} is outside the model's {n} observation ids "
                             f"(0..{n - 1}, its config's data.generator.n_states)")
        return ids.reshape(self._batch).astype(np.int32)


def _discrete_size(space: spaces.Space, what: str, limit: int) -> int:
    """``n`` of a ``Discrete(n)`` space that fits the model's ``limit``, else a one-line ValueError."""
    if isinstance(space, spaces.Box) and what == "observation":
        raise ValueError(f"a Box observation space needs ids: wrap the env in "
                         f"anymdp_gym.wrappers.DiscretiseObservation (at most {limit} ids for this model)")
    if not isinstance(space, spaces.Discrete) or int(space.start) != 0:
        raise ValueError(f"the {what} space must be Discrete(n) starting at 0, got {space}")
    if int(space.n) > limit:
        raise ValueError(f"the {what} space has {int(space.n)} {what}s, the model was trained on {limit}")
    return int(space.n)
