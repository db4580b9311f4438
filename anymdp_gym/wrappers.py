"""Gymnasium wrappers that turn continuous tasks into the discrete ids a tabular or in-context
learner reads: ``DiscretiseObservation`` (a ``Box`` observation to one id of a regular grid),
``DiscretiseActions`` (a 1-D ``Box`` action to a few evenly spaced values) and
``PendulumAngle`` (Pendulum's ``(cos, sin, velocity)`` to ``(angle, velocity)``, so that the angle
can be binned as the reference evaluation bins it).

Binning: dimension ``i`` with ``bins[i]`` equal-width bins over ``[low[i], high[i]]``; a value is
clipped into that range first (so the outer bins also hold everything beyond it). The id is the
row-major index of the bin tuple, ``id = b_0 * bins[1] * ... * bins[-1] + ... + b_last``, as the
OmniRL reference numbers its discretised MountainCar and Pendulum states.
"""

from __future__ import annotations

from typing import Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MAX_IDS = 4096
"""Most ids ``DiscretiseObservation`` makes (32 times the largest vocabulary of our configs,
``configs/tpu.yaml``'s 128): a grid beyond it is a mistake, not a task an in-context learner reads."""


class DiscretiseObservation(gym.ObservationWrapper):
    """A 1-D ``Box`` observation as one id in ``Discrete(prod(bins))`` (module doc).

    ``bins``: bins per dimension (one int for all); ``low``/``high``: the binned range per
    dimension, by default the space's bounds, which must then be finite; ``max_ids``: the most
    ids allowed (``MAX_IDS``).
    """

    def __init__(self, env: gym.Env, bins: int | Sequence[int], low: Optional[Sequence[float]] = None,
                 high: Optional[Sequence[float]] = None, max_ids: int = MAX_IDS):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"DiscretiseObservation needs a 1-D Box observation space, got {space}")
        dims = space.shape[0]
        self.bins = np.broadcast_to(np.asarray(bins, np.int64), (dims,)).copy()
        if np.any(self.bins < 1):
            raise ValueError(f"bins must be >= 1 per dimension, got {bins}")
        self.low = np.asarray(space.low if low is None else low, np.float64).reshape(dims)
        self.high = np.asarray(space.high if high is None else high, np.float64).reshape(dims)
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError(f"the observation bounds {self.low} .. {self.high} are not finite: pass low= and high=")
        if np.any(self.high <= self.low):
            raise ValueError(f"high must exceed low in every dimension, got {self.low} .. {self.high}")
        n_ids = int(np.prod(self.bins))
        if n_ids > max_ids:
            raise ValueError(f"{' x '.join(map(str, self.bins))} bins make {n_ids} ids, more than max_ids={max_ids}")
        self.observation_space = spaces.Discrete(n_ids)

    def observation(self, observation) -> int:
        x = np.clip(np.asarray(observation, np.float64), self.low, self.high)
        index = np.floor((x - self.low) / (self.high - self.low) * self.bins).astype(np.int64)
        return int(np.ravel_multi_index(tuple(np.minimum(index, self.bins - 1)), tuple(self.bins)))


class DiscretiseActions(gym.ActionWrapper):
    """A ``Box`` action of shape ``(1,)`` as ``Discrete(n)``: action ``k`` applies the ``k``-th of
    ``n`` evenly spaced values from the space's low to its high bound."""

    def __init__(self, env: gym.Env, n: int):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Box) or space.shape != (1,):
            raise ValueError(f"DiscretiseActions needs a Box action space of shape (1,), got {space}")
        if n < 2:
            raise ValueError(f"n must be >= 2, got {n}")
        self.values = np.linspace(space.low[0], space.high[0], n).astype(space.dtype)
        self.action_space = spaces.Discrete(n)

    def action(self, action) -> np.ndarray:
        return self.values[int(action)].reshape(1)


class PendulumAngle(gym.ObservationWrapper):
    """Pendulum's observation ``(cos theta, sin theta, theta_dot)`` as ``(theta, theta_dot)`` with
    ``theta`` in ``[0, 2 pi)`` (0 upright), the velocity within the env's ``max_speed``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        speed = float(env.observation_space.high[2])
        self.observation_space = spaces.Box(np.array([0.0, -speed], np.float32),
                                            np.array([2 * np.pi, speed], np.float32), dtype=np.float32)

    def observation(self, observation) -> np.ndarray:
        theta = np.arctan2(observation[1], observation[0]) % (2 * np.pi)
        return np.array([theta, observation[2]], np.float32)
