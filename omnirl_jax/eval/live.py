"""Live Gymnasium tasks: environments with no transition table, played through their own
``step`` by the model (``omnirl_jax.agent.InContextAgent``) and by the baselines.

The tasks are the reference evaluation's discretised classic-control tasks (observation bins,
action values and physics as its evaluation scripts set them):

* **MountainCar**: ``MountainCar-v0`` (3 actions, episodes truncated at 200 steps, reward -1
  per step until the car reaches the flag); position over ``[-1.2, 0.6]`` and velocity over
  ``[-0.07, 0.07]``, 8 bins each: 64 ids.
* **Pendulum**: ``Pendulum-v1`` with ``g = 9.81`` (the reference's ``pendulum1``; 200-step
  episodes, never terminated); 5 torques evenly spaced over ``[-2, 2]``; the angle over
  ``[0, 2 pi)`` in 12 bins and the angular velocity over ``[-8, 8]`` in 5: 60 ids.

A group of a live suite plays ``n_tasks`` *instances* of its task: instance ``i`` relabels the
ids by a seeded permutation into the model's vocabulary (as the ``gym`` suite does) and seeds
its env with its own seed; every agent plays the same instances. All instances are stepped in
lockstep, so the model acts for all of them in one jitted call per step.

Normalisation (no table, so no exact returns): ``R_random`` and ``R_oracle`` of a task are the
mean returns of ``REFERENCE_EPISODES`` seeded episodes of the uniform-random policy and of the
task's reference controller, which reads the env's true continuous state (the ``oracle`` agent
of a live suite is that controller): on MountainCar, push in the direction of the velocity
(measured: -119.6 +- 3.6 over 50 episodes, random -200); on Pendulum, pump energy towards the
upright energy and balance with a PD law near the top, rounded to the nearest of the 5 torques
(measured: -146 +- 91, random -1197 +- 283). The reference's own normaliser for Pendulum is a
fixed optimum of -385.

Baselines: every name of ``LIVE_BASELINES``, a runner that plays a group and returns its
``[n_tasks, steps]`` rewards and episode ends. Step-by-step learners are players with
``act(obs) -> actions`` and ``observe(reward, next_obs, terminated, truncated)`` over the batch
(``play`` runs one); ``ppo`` runs its own loop on gymnax's JAX port of the task
(``omnirl_jax.eval.ppo``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Protocol, Sequence

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from anymdp_gym.solvers import RandomSolver
from anymdp_gym.wrappers import DiscretiseActions, DiscretiseObservation, PendulumAngle
from omnirl_jax.eval.baselines import SOLVERS, make_solver, solver_seed

REFERENCE_EPISODES = 200
"""Episodes behind each reference return, as the reference evaluation averages its random score."""

PENDULUM_TORQUES = 5


def mountain_car() -> gym.Env:
    env = gym.make("MountainCar-v0", disable_env_checker=True)
    return DiscretiseObservation(env, (8, 8), low=(-1.2, -0.07), high=(0.6, 0.07))


def mountain_car_controller(env: gym.Env) -> int:
    """Push in the direction of the velocity (right when at rest)."""
    _, velocity = env.unwrapped.state
    return 2 if velocity >= 0 else 0


def pendulum() -> gym.Env:
    env = DiscretiseActions(gym.make("Pendulum-v1", g=9.81, disable_env_checker=True), PENDULUM_TORQUES)
    return DiscretiseObservation(PendulumAngle(env), (12, 5))


def pendulum_controller(env: gym.Env) -> int:
    """Energy pumping far from the top, a PD law near it, as the nearest available torque."""
    base = env.unwrapped
    theta, speed = base.state
    theta = (theta + np.pi) % (2 * np.pi) - np.pi  # 0 upright
    if np.cos(theta) > 0.85:
        torque = -(8.0 * theta + 1.5 * speed)
    else:
        energy, top = 0.5 * speed**2 + 1.5 * base.g * np.cos(theta), 1.5 * base.g
        torque = (2.0 if energy < top else -0.5) * (np.sign(speed) or 1.0)
    torques = np.linspace(-base.max_torque, base.max_torque, PENDULUM_TORQUES)
    return int(np.argmin(np.abs(torques - np.clip(torque, -base.max_torque, base.max_torque))))


@dataclasses.dataclass(frozen=True)
class LiveTask:
    """How to make a live task's discretised env, and its reference controller (module doc)."""

    make: Callable[[], gym.Env]
    controller: Callable[[gym.Env], int]

    @functools.cached_property
    def size(self) -> tuple[int, int]:
        """``(ids, actions)`` of the discretised env."""
        env = self.make()
        try:
            return int(env.observation_space.n), int(env.action_space.n)
        finally:
            env.close()


LIVE_TASKS: dict[str, LiveTask] = {
    "MountainCar": LiveTask(mountain_car, mountain_car_controller),
    "Pendulum": LiveTask(pendulum, pendulum_controller),
}


class Instance(NamedTuple):
    """One task of a live group: the ids relabelled by ``mapping`` (env id -> model id), and
    the seed of the env's first reset."""

    task: LiveTask
    mapping: np.ndarray
    env_seed: int


class Player(Protocol):
    """A step-by-step agent over a batch of instances (``InContextAgent`` with ``num_envs``)."""

    def act(self, obs: np.ndarray) -> np.ndarray: ...

    def observe(self, reward, next_obs, terminated, truncated) -> None: ...


class LivePlay(NamedTuple):
    """What a baseline needs to play a group: its instances, the vocabulary size, the budget."""

    instances: Sequence[Instance]
    n_obs: int
    n_steps: int
    seed: int
    label: str = ""


# --------------------------------------------------------------------------- playing
def play(make_player: Callable[[Sequence[gym.Env]], Player], game: LivePlay) -> tuple[np.ndarray, np.ndarray]:
    """``game.n_steps`` steps of the player made for the instances' envs, on all of them in
    lockstep: ``(reward, done)``, each ``[n_tasks, n_steps]``. After an episode ends its env is
    reset (unseeded: its RNG goes on)."""
    envs = [inst.task.make() for inst in game.instances]
    player = make_player(envs)
    n = len(envs)
    reward, done = np.zeros((n, game.n_steps), np.float32), np.zeros((n, game.n_steps), bool)
    obs = np.array([inst.mapping[env.reset(seed=inst.env_seed)[0]] for env, inst in zip(envs, game.instances)])
    try:
        for t in tqdm(range(game.n_steps), desc=game.label, leave=False, disable=None):
            actions = player.act(obs)
            next_obs, terminated, truncated = np.zeros_like(obs), np.zeros(n, bool), np.zeros(n, bool)
            for i, (env, inst) in enumerate(zip(envs, game.instances)):
                o, r, terminated[i], truncated[i], _ = env.step(int(actions[i]))
                next_obs[i], reward[i, t] = inst.mapping[o], r
            player.observe(reward[:, t], next_obs, terminated, truncated)
            done[:, t] = terminated | truncated
            obs = next_obs.copy()
            for i in np.flatnonzero(done[:, t]):
                obs[i] = game.instances[i].mapping[envs[i].reset()[0]]
    finally:
        for env in envs:
            env.close()
    return reward, done


class SolverPlayer:
    """One ``anymdp_gym.solvers`` learner per instance."""

    def __init__(self, solvers: Sequence):
        self.solvers, self._last = solvers, None

    def act(self, obs: np.ndarray) -> np.ndarray:
        actions = np.array([s.act(int(o)) for s, o in zip(self.solvers, obs)])
        self._last = (obs, actions)
        return actions

    def observe(self, reward, next_obs, terminated, truncated) -> None:
        obs, actions = self._last
        for i, s in enumerate(self.solvers):
            s.update(int(obs[i]), int(actions[i]), float(reward[i]), int(next_obs[i]), bool(terminated[i]),
                     bool(truncated[i]))


class ControllerPlayer:
    """Each instance's reference controller, reading its env's true state."""

    def __init__(self, envs: Sequence[gym.Env], instances: Sequence[Instance]):
        self.envs, self.instances = envs, instances

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.array([inst.task.controller(env) for env, inst in zip(self.envs, self.instances)])

    def observe(self, reward, next_obs, terminated, truncated) -> None:
        """Learns nothing."""


def _n_actions(game: LivePlay) -> int:
    return game.instances[0].task.size[1]


def _random(game: LivePlay):
    players = [RandomSolver(_n_actions(game), seed=solver_seed(game.seed, i)) for i in range(len(game.instances))]
    return play(lambda _: SolverPlayer(players), game)


def _oracle(game: LivePlay):
    return play(lambda envs: ControllerPlayer(envs, game.instances), game)


def _solver(name: str, game: LivePlay):
    solvers = [make_solver(name, game.n_obs, _n_actions(game), game.n_steps, solver_seed(game.seed, i))
               for i in range(len(game.instances))]
    return play(lambda _: SolverPlayer(solvers), game)


def _ppo(game: LivePlay):
    import jax

    from omnirl_jax.eval import ppo  # imported here: gymnax and rejax take seconds to import

    env = ppo.live_env(game.instances[0].task, game.n_obs)
    params = env.params(np.stack([inst.mapping for inst in game.instances]))
    steps = jax.device_get(ppo.ppo_baseline(env, params, jax.random.key(game.seed), game.n_steps))
    return steps.reward, steps.done


LIVE_BASELINES: dict[str, Callable[[LivePlay], tuple[np.ndarray, np.ndarray]]] = {
    "random": _random,
    "oracle": _oracle,
    **{name: functools.partial(_solver, name) for name in SOLVERS},
    "ppo": _ppo,
}
"""Baseline name -> runner of a live group (module doc)."""


# --------------------------------------------------------------------------- references
def episode_returns(task: LiveTask, choose: Callable[[gym.Env], int], episodes: int, seed: int) -> np.ndarray:
    """Returns of ``episodes`` episodes of ``choose(env) -> action``, the first reset seeded."""
    env = task.make()
    returns = np.zeros(episodes)
    try:
        env.reset(seed=seed)
        for k in range(episodes):
            over = False
            while not over:
                _, r, terminated, truncated, _ = env.step(choose(env))
                returns[k] += r
                over = terminated or truncated
            env.reset()
    finally:
        env.close()
    return returns


def reference_returns(task: LiveTask, seed: int, episodes: int = REFERENCE_EPISODES) -> tuple[float, float]:
    """``(R_random, R_oracle)``: mean returns of the uniform-random policy and the controller."""
    rng = np.random.default_rng(seed)
    n_actions = task.size[1]
    random = episode_returns(task, lambda env: int(rng.integers(n_actions)), episodes, seed)
    return float(random.mean()), float(episode_returns(task, task.controller, episodes, seed).mean())
