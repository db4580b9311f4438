"""Task sampling, validation, persistence and interop with the reference package."""

import numpy as np
import pytest

import anymdp_gym
from anymdp_gym import Task, add_emission, sample_contextual_bandit, sample_garnet_task, sample_task



@pytest.fixture(scope="module")
def task():
    return sample_task(32, seed=3)


def test_same_seed_same_task_bitwise(task):
    again = sample_task(32, seed=3)
    for name in ("transition", "reward", "reward_noise", "start_states", "terminal", "state_mapping"):
        assert np.array_equal(getattr(task, name), getattr(again, name))
    assert task.max_steps == again.max_steps
    other = sample_task(32, seed=4)
    assert not np.array_equal(task.transition, other.transition)


def test_generator_is_advanced_in_place():
    rng = np.random.default_rng(0)
    first, second = sample_task(16, seed=rng), sample_task(16, seed=rng)
    assert not np.array_equal(first.transition, second.transition)


def test_task_is_immutable(task):
    with pytest.raises(ValueError):
        task.transition[0, 0, 0] = 1.0
    with pytest.raises(Exception):
        task.max_steps = 3


def test_structure(task):
    n = task.n_active
    rows = task.transition.sum(axis=2)
    assert np.allclose(rows[~task.terminal], 1.0)
    assert np.all(rows[task.terminal] == 0.0)
    assert set(task.start_states) <= {0, 1, 2}
    assert not task.terminal[task.start_states].any()
    assert sorted(task.state_mapping) == list(range(32))
    lo, hi = anymdp_gym.sampling.episode_length_range(32)
    assert lo <= task.max_steps <= np.ceil(hi)
    # banded: no transition further back than S//2 + 1 or further ahead than S//4 + 1 plus growth
    s, a, j = np.nonzero(task.transition)
    assert np.all(s - j <= n // 2 + 1)


def test_draft_with_an_empty_action_row_is_rejected():
    # This draw once returned a task with a 0 / 0 (NaN) action row, which stopped a training run at
    # data seed 0, sequence 11920: the sampler must reject that draft and return a valid task.
    task_seq, _ = np.random.SeedSequence([0, 11920]).spawn(2)
    task = sample_task(16, seed=np.random.default_rng(task_seq))
    assert np.all(np.isfinite(task.transition))
    assert np.allclose(task.transition.sum(axis=2)[~task.terminal], 1.0)


def test_state_subset():
    task = sample_task(64, seed=1, min_states=16)
    assert 16 <= task.n_active <= 64
    assert task.n_states == 64
    assert len(set(task.state_mapping)) == task.n_active
    assert task.state_mapping.max() < 64


def test_bandit():
    task = sample_task(1, n_actions=4, seed=0)
    assert task.transition.shape == (1, 4, 1)
    assert task.reward.std() > 0.01


@pytest.mark.parametrize("rewards", ["anymdp", "gaussian"])
def test_contextual_bandit(rewards):
    """Contexts i.i.d. whatever the action (uniform rows and starts), one pull per episode, mean
    rewards per (context, arm) whatever the context reached; one context is AnyMDP's bandit."""
    task = sample_contextual_bandit(8, 5, seed=0, rewards=rewards)
    assert task.one_step and task.n_active == 8 and not task.terminal.any()
    assert np.allclose(task.transition, 1 / 8) and np.allclose(task.start_probs, 1 / 8)
    assert np.all(task.reward == task.reward[:, :, :1]) and np.all(task.reward_noise == task.reward_noise[:, :, :1])
    assert len(np.unique(task.reward[:, :, 0].argmax(axis=1))) > 1  # the best arm depends on the context
    assert not sample_task(8, seed=0).one_step
    bandit = sample_task(1, n_actions=5, seed=7)
    assert bandit.one_step and np.array_equal(bandit.reward, sample_contextual_bandit(1, 5, seed=7).reward)
    with pytest.raises(ValueError, match="rewards"):
        sample_contextual_bandit(8, rewards="bernoulli")
    with pytest.raises(ValueError, match="n_contexts"):
        sample_contextual_bandit(0)


def test_garnet_and_pomdp():
    garnet = sample_garnet_task(16, seed=0, branching=3)
    assert np.all((garnet.transition > 0).sum(axis=2) == 3)
    assert np.allclose(garnet.transition.sum(axis=2), 1.0)
    assert not garnet.terminal.any()
    pomdp = add_emission(sample_task(16, seed=0), n_obs=32, seed=1)
    assert pomdp.task_type == "POMDP" and pomdp.n_obs == 32
    assert np.allclose(pomdp.emission.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_states=5), "n_states"),
        (dict(n_states=0), "n_states"),
        (dict(n_states=16, n_actions=1), "n_actions"),
        (dict(n_states=16, min_states=4), "min_states"),
        (dict(n_states=16, min_states=17), "min_states"),
    ],
)
def test_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_task(**kwargs)


def test_malformed_task_rejected(task):
    bad = np.array(task.transition)
    s = int(np.flatnonzero(~task.terminal)[0])
    bad[s, 0] *= 2
    with pytest.raises(ValueError, match="sums to"):
        task.replace(transition=bad)
    with pytest.raises(ValueError, match="reward has shape"):
        task.replace(reward=np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="start state is terminal"):
        task.replace(terminal=np.ones(task.n_active, dtype=bool))


def test_save_load_roundtrip(task, tmp_path):
    path = tmp_path / "task.npz"
    task.save(path)
    loaded = Task.load(path)
    for name in ("transition", "reward", "reward_noise", "start_states", "start_probs", "terminal"):
        assert np.array_equal(getattr(task, name), getattr(loaded, name))
    assert (loaded.max_steps, loaded.goal_terminates, loaded.task_type) == (
        task.max_steps, task.goal_terminates, task.task_type)
    pomdp = add_emission(task, seed=0)
    pomdp.save(path)
    assert np.array_equal(Task.load(path).emission, pomdp.emission)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read task file"):
        Task.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="lacks"):
        Task.load(tmp_path / "other.npz")


def test_damaged_task_file_raises_value_error_naming_it(tmp_path):
    """Truncated at any length or with a bit flipped anywhere, a task file either loads the very
    task saved (a flip in zip bookkeeping that no reader uses) or raises ValueError naming it."""
    task = sample_task(8, seed=0)
    task.save(tmp_path / "task.npz")
    raw = (tmp_path / "task.npz").read_bytes()
    path = tmp_path / "damaged.npz"
    damaged = [raw[:n] for n in range(0, len(raw), 97)]
    damaged += [raw[:i] + bytes([raw[i] ^ 1 << bit]) + raw[i + 1:] for i in range(0, len(raw), 31) for bit in (0, 7)]
    for data in damaged:
        path.write_bytes(data)
        try:
            loaded = Task.load(path)
        except ValueError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            continue
        assert all(np.array_equal(getattr(loaded, f), getattr(task, f)) for f in ("transition", "reward", "terminal"))


def test_xenoverse_dict_roundtrip(task):
    d = task.to_xenoverse()
    assert set(d) >= {"ns", "na", "max_steps", "state_mapping", "transition", "reward", "reward_noise",
                      "s_0", "s_0_prob", "s_e", "final_goal_terminate", "task_type"}
    back = Task.from_xenoverse(d)
    assert np.array_equal(back.transition, task.transition)
    assert back.max_steps == task.max_steps
    assert np.array_equal(back.terminal, task.terminal)


def test_reference_accepts_our_tasks():
    xeno = pytest.importorskip("xenoverse.anymdp")
    from xenoverse.anymdp.solver import check_valuefunction

    accepted = 0
    for seed in range(6):
        task = sample_task(16, seed=seed)
        env = xeno.AnyMDPEnv(max_steps=100)
        env.set_task(task.to_xenoverse())  # raises on anything it finds malformed
        env.reset()
        env.step(0)
        accepted += bool(check_valuefunction(task.to_xenoverse()))
    # the reference's damped value iteration is approximate; it must agree on nearly all tasks
    assert accepted >= 5


def test_reference_tasks_convert():
    xeno = pytest.importorskip("xenoverse.anymdp")
    np.random.seed(0)  # the reference draws from numpy's global generator
    d = xeno.AnyMDPTaskSampler(16, 5, seed=0)
    task = Task.from_xenoverse(d)
    assert task.n_states == 16 and task.n_actions == 5
    assert task.max_steps == int(np.ceil(d["max_steps"]))
