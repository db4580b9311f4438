"""Dark Room as a Task: AD's rules (start in the centre, reward on the goal, 20 steps, walls),
a fixed goal split, and exact returns of the oracle."""

import gymnasium as gym

import anymdp_gym  # noqa: F401  (registers AnyMDP-v0)
from anymdp_gym import darkroom
from omnirl_jax.eval.baselines import reference_returns


def test_goal_split_is_fixed_and_disjoint():
    test, train = darkroom.goals("test"), darkroom.goals("train")
    assert len(test) == 16 and len(train) == 65
    assert set(test) | set(train) == {(r, c) for r in range(9) for c in range(9)} and not set(test) & set(train)
    assert test == darkroom.goals("test")


def test_room_rules_through_the_gymnasium_env():
    task = darkroom.darkroom_task((4, 6), n_obs=100, seed=0)
    cell = {int(task.state_mapping[i]): divmod(i, 9) for i in range(81)}
    env = gym.make("AnyMDP-v0", task=task)
    obs, _ = env.reset(seed=0)
    assert cell[obs] == (4, 4)
    rewards, cells = [], []
    for action in [1, 1, 4, 2, 3] + [0] * 15:  # right, right, stay, up, down, then left into the wall
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        cells.append(cell[obs])
        assert not terminated
    assert cells[:5] == [(4, 5), (4, 6), (4, 6), (3, 6), (4, 6)] and cells[-1] == (4, 0)
    assert rewards[:5] == [0, 1, 1, 0, 1] and sum(rewards) == 3 and truncated


def test_oracle_walks_to_the_goal_and_stays():
    for goal, best in (((4, 4), 20), ((0, 0), 13), ((2, 5), 18)):  # on the goal from step d on: 21 - d
        r_random, r_oracle = reference_returns(darkroom.darkroom_task(goal))
        assert r_oracle == best and 0 <= r_random < best
