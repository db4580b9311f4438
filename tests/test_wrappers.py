"""Discretisation wrappers: ids against the reference's digitize rule, one-line refusals."""

import gymnasium as gym
import numpy as np
import pytest

from anymdp_gym.wrappers import DiscretiseActions, DiscretiseObservation, PendulumAngle


def test_observation_ids_follow_the_reference_binning():
    env = DiscretiseObservation(gym.make("MountainCar-v0"), (8, 4), low=(-1.2, -0.07), high=(0.6, 0.07))
    assert env.observation_space == gym.spaces.Discrete(32)
    rng = np.random.default_rng(0)
    points = rng.uniform((-1.5, -0.1), (0.9, 0.1), size=(500, 2))
    for x in points:
        bins = [np.clip(np.digitize(np.clip(v, lo, hi), np.linspace(lo, hi, n + 1)) - 1, 0, n - 1)
                for v, lo, hi, n in zip(x, (-1.2, -0.07), (0.6, 0.07), (8, 4))]
        assert env.observation(x) == bins[0] * 4 + bins[1]
    assert env.observation(np.array([0.6, 0.07])) == 31 and env.observation(np.array([-9.0, -9.0])) == 0
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, int) and env.observation_space.contains(obs)


def test_observation_wrapper_refuses_what_it_cannot_bin():
    with pytest.raises(ValueError, match="not finite: pass low= and high="):
        DiscretiseObservation(gym.make("CartPole-v1"), 4)
    with pytest.raises(ValueError, match="make 10000 ids, more than max_ids=4096"):
        DiscretiseObservation(gym.make("MountainCar-v0"), 100)
    with pytest.raises(ValueError, match="1-D Box"):
        DiscretiseObservation(gym.make("FrozenLake-v1"), 4)


def test_pendulum_actions_and_angle():
    env = PendulumAngle(DiscretiseActions(gym.make("Pendulum-v1"), 5))
    assert env.action_space == gym.spaces.Discrete(5)
    np.testing.assert_allclose([env.env.action(a)[0] for a in range(5)], [-2, -1, 0, 1, 2])
    theta, speed = env.observation(np.array([0.0, -1.0, 3.0], np.float32))
    np.testing.assert_allclose([theta, speed], [1.5 * np.pi, 3.0], rtol=1e-6)
    with pytest.raises(ValueError, match="shape \\(1,\\)"):
        DiscretiseActions(gym.make("MountainCar-v0"), 3)
