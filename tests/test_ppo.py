"""The ppo baseline: rejax PPO's own play while it learns, recorded step by step, deterministic
from its key; the live tasks' gymnax ports observed exactly as the suites' Gymnasium wrappers
observe them."""

import jax
import numpy as np

from omnirl_jax.eval import live
from omnirl_jax.eval.baselines import TABLE_BASELINES, TablePlay
from omnirl_jax.eval.suites import get_suite
from anymdp_gym.jax import dynamics as env_jax


def test_ppo_records_its_own_play_deterministically():
    """Sizes as tests/test_evaluate.py::test_end_to_end_writes_reports plays ppo, so that one
    compilation serves both (about 10 s on the 2-core CPU)."""
    tasks = get_suite("anymdp-16").tasks("anymdp-16", 16, 3)
    params = env_jax.from_tasks(tasks, 5)

    def play(key):
        return jax.device_get(TABLE_BASELINES["ppo"](TablePlay(tasks, params, 16, jax.random.key(key), 256, 0)))

    first, again, other = play(0), play(0), play(1)
    assert first.reward.shape == first.done.shape == (3, 256)
    np.testing.assert_array_equal(first.reward, again.reward)
    np.testing.assert_array_equal(first.done, again.done)
    assert not np.array_equal(first.reward, other.reward)
    for i, task in enumerate(tasks):  # each row is its own task's play: episodes no longer than its limit
        ends = np.flatnonzero(first.done[i])
        assert ends.size > 0 and np.diff(np.concatenate([[-1], ends])).max() <= task.max_steps
        possible = np.unique(np.concatenate([task.reward[task.transition > 0].ravel(), [0.0]]))
        if not task.reward_noise.any():  # noiseless rewards are the table's
            assert np.all(np.isin(np.round(first.reward[i], 5), np.round(possible, 5)))


def test_discretised_gymnax_ports_observe_as_the_gymnasium_wrappers():
    """The ids PPO sees on gymnax's MountainCar and Pendulum are the ids the Gymnasium suites'
    wrappers give the same continuous observation, relabelled by the instance's mapping."""
    from omnirl_jax.eval.ppo import live_env

    rng = np.random.default_rng(0)
    for name, low, high in (("MountainCar", [-1.3, -0.08], [0.7, 0.08]), ("Pendulum", [-1.1, -1.1, -8.5], [1.1, 1.1, 8.5])):
        task = live.LIVE_TASKS[name]
        n_ids, n_actions = task.size
        env = live_env(task, 100)
        assert env.observation_space().n == 100 and env.action_space().n == n_actions
        mapping = rng.permutation(100)[:n_ids]
        params = jax.tree.map(lambda x: x[0], env.params(mapping[None]))
        raw = rng.uniform(low, high, (500, len(low))).astype(np.float32)
        if name == "Pendulum":
            raw[:, :2] /= np.linalg.norm(raw[:, :2], axis=1, keepdims=True)  # (cos, sin) on the circle
        ours = np.asarray(jax.vmap(env._id, in_axes=(0, None))(raw, params))
        gym_env = task.make()  # DiscretiseObservation(MountainCar), DiscretiseObservation(PendulumAngle(...))
        angle = gym_env.env.observation if name == "Pendulum" else (lambda x: x)
        theirs = [mapping[gym_env.observation(angle(x))] for x in raw]
        gym_env.close()
        np.testing.assert_array_equal(ours, theirs)
