"""Rollouts: schema of behaviour records, table baselines against exact returns, and the model
stepped with its recurrent state against one pass over the records it produced (and the
``InContextAgent`` against the rollout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from gymnasium import spaces

from anymdp_gym import sample_task
from anymdp_gym.jax import dynamics as env_jax
from omnirl_jax.agent import InContextAgent
from omnirl_jax.eval.baselines import oracle_table, reference_returns, table_baseline
from omnirl_jax.config import Config, DataConfig, GeneratorConfig, ModelConfig
from omnirl_jax.data.schema import TAG_ID
from omnirl_jax.eval.evaluate import window_returns
from omnirl_jax.eval.restore import LoadedModel
from omnirl_jax.model import OmniRL
from omnirl_jax.eval.rollout import PROMPT, ModelRunner, Sampling, behaviour_records

N_STATES, N_ACTIONS = 16, 5


@pytest.fixture(scope="module")
def tasks():
    """Tasks with pitfalls that short random play reaches, so episodes end both ways."""
    found = [t for t in (sample_task(N_STATES, N_ACTIONS, seed=s) for s in range(60))
             if t.terminal[:6].any() and t.max_steps <= 110]
    assert len(found) >= 2
    return found[:2]


def test_behaviour_records_follow_the_schema(tasks):
    params = env_jax.from_tasks(tasks, N_ACTIONS)
    greedy = np.stack([oracle_table(t, N_STATES) for t in tasks])
    rec = jax.device_get(behaviour_records(params, greedy, np.array([1.0, 0.3], np.float32),
                                           np.full(2, TAG_ID["opt3"], np.int32), jax.random.key(0), n_records=3000))
    for i, task in enumerate(tasks):
        null = rec.action[i] == N_ACTIONS
        after_terminal = np.concatenate([[False], rec.terminated[i][:-1]])
        np.testing.assert_array_equal(null, after_terminal)  # a terminal record exactly after each termination
        assert null.sum() > 0
        np.testing.assert_array_equal(rec.obs[i][1:][rec.terminated[i][:-1]], rec.next_obs[i][:-1][rec.terminated[i][:-1]])
        assert np.all(rec.reward[i][null] == 0) and np.all(rec.tag[i][1:][null[1:]] == rec.tag[i][:-1][null[1:]])
        starts = task.state_mapping[task.start_states]
        resets = np.concatenate([[True], (null | rec.truncated[i])[:-1]])  # a new episode starts here
        assert np.all(np.isin(rec.obs[i][resets & ~null], starts))
        moved = ~null[:-1] & ~rec.truncated[i][:-1] & ~rec.terminated[i][:-1]
        np.testing.assert_array_equal(rec.obs[i][1:][moved], rec.next_obs[i][:-1][moved])
    assert rec.truncated.any()
    assert set(np.unique(rec.tag[0][rec.action[0] < N_ACTIONS])) == {TAG_ID["rnd"]}  # eps = 1
    assert set(np.unique(rec.tag[1])) == {TAG_ID["rnd"], TAG_ID["opt3"]}


def test_table_baselines_match_exact_returns(tasks):
    params = env_jax.from_tasks(tasks, N_ACTIONS)
    for name, column in (("random", 0), ("oracle", 1)):
        traj = jax.device_get(table_baseline(name, tasks, params, N_STATES, jax.random.key(1), 20_000))
        measured = np.nanmean(window_returns(traj.reward, traj.done, 20_000), axis=1)
        for task, value in zip(tasks, measured):
            exact = reference_returns(task)[column]
            scale = np.abs(task.reward).max() * task.max_steps
            assert abs(value - exact) < 0.05 * scale, (name, value, exact)


def _records_of(traj, i: int, tag: int) -> dict:
    """The record sequence the online loop fed for task ``i``: each step, then a terminal record
    after a termination (fed just before the next step, so none after the last step)."""
    rows = []
    for t in range(traj.obs.shape[1]):
        rows.append((traj.obs[i, t], traj.action[i, t], traj.reward[i, t]))
        if traj.terminated[i, t] and t + 1 < traj.obs.shape[1]:
            rows.append((traj.next_obs[i, t], N_ACTIONS, 0.0))
    obs, action, reward = (np.array(c) for c in zip(*rows))
    return {"prompt": np.full_like(obs, PROMPT), "obs": obs, "tag": np.full_like(obs, tag), "action": action,
            "reward": reward.astype(np.float32)}


def _agent_replays(runner, traj, carry):
    """Fed what the rollout's env produced, the greedy ``InContextAgent`` takes the rollout's
    action at every step (terminal records included) and ends with the rollout's carry."""
    config = Config(data=DataConfig(generator=GeneratorConfig(n_states=N_STATES, n_actions=N_ACTIONS)))  # the data its model was trained on
    model = LoadedModel(runner, N_STATES, N_ACTIONS, step=0, config=config)
    agent = InContextAgent(model, spaces.Discrete(N_STATES), spaces.Discrete(N_ACTIONS), num_envs=2, temperature=0.0)
    for t in range(traj.obs.shape[1]):
        np.testing.assert_array_equal(agent.act(traj.obs[:, t]), traj.action[:, t], err_msg=f"step {t}")
        agent.observe(traj.reward[:, t], traj.next_obs[:, t], traj.terminated[:, t], traj.truncated[:, t])
    rows = ~traj.terminated[:, -1]  # the rollout reads a last terminal record with its next step, the agent at once
    assert rows.any()
    for mine, ref in zip(jax.tree.leaves(agent.carry), jax.tree.leaves(carry)):
        np.testing.assert_allclose(np.asarray(mine)[rows], np.asarray(ref)[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature, options", [(0.0, {}), (1.0, {}),
                                                  (1.0, {"fused_step": True, "reward_pair": True, "pair_embed": True})])
def test_model_stepping_equals_one_pass(tasks, temperature, options):
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, remat=False, **options)
    cfg.chunk_size = cfg.tokens_per_step
    graphdef, params = nnx.split(OmniRL(cfg, n_states=N_STATES, n_actions=N_ACTIONS, rngs=nnx.Rngs(0)), nnx.Param)
    runner = ModelRunner(graphdef, params, N_ACTIONS)
    env_params = env_jax.from_tasks(tasks, N_ACTIONS)
    tag = TAG_ID["unk"]
    traj, carry = runner.rollout(runner.init_carry(2), env_params, jax.random.key(2), n_steps=200, tag=tag,
                                 sampling=Sampling(temperature))
    traj = jax.device_get(traj)
    assert traj.terminated.any()  # terminal records are exercised
    if temperature == 0.0:
        _agent_replays(runner, traj, carry)
    one_pass_fn = jax.jit(lambda batch: nnx.merge(graphdef, params)(batch, runner.init_carry(1)))
    for i in range(2):
        batch = {k: jnp.asarray(v)[None] for k, v in _records_of(traj, i, tag).items()}
        out, one_pass = one_pass_fn(batch)
        for mine, ref in zip(jax.tree.leaves(carry), jax.tree.leaves(one_pass)):
            np.testing.assert_allclose(np.asarray(mine)[i], np.asarray(ref)[0], rtol=1e-4, atol=1e-5)
        if temperature == 0.0:
            acting = np.asarray(batch["action"][0]) < N_ACTIONS
            logits = np.asarray(out["policy_logits"][0])[acting]
            top2 = np.sort(logits, axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > 1e-4
            np.testing.assert_array_equal(logits.argmax(axis=1)[clear], traj.action[i][clear])


def test_gathering_steps_sample_at_one_then_at_the_temperature(tasks):
    """``Sampling(0, gather_steps=g)``: the first g actions are those of a rollout at temperature 1
    with the same key (not all greedy), every later one is the greedy action of the logits that
    one pass over the records it produced gives."""
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, remat=False, fused_step=True)
    cfg.chunk_size = cfg.tokens_per_step
    graphdef, params = nnx.split(OmniRL(cfg, n_states=N_STATES, n_actions=N_ACTIONS, rngs=nnx.Rngs(0)), nnx.Param)
    runner = ModelRunner(graphdef, params, N_ACTIONS)
    env_params, tag, gather = env_jax.from_tasks(tasks, N_ACTIONS), TAG_ID["unk"], 40
    play = lambda sampling: jax.device_get(runner.rollout(runner.init_carry(2), env_params, jax.random.key(3),
                                                          n_steps=120, tag=tag, sampling=sampling)[0])
    sampled, mixed = play(Sampling(1.0)), play(Sampling(0.0, gather_steps=gather))
    np.testing.assert_array_equal(mixed.action[:, :gather], sampled.action[:, :gather])
    model = nnx.merge(graphdef, params)
    greedy_first = []
    for i in range(2):
        batch = {k: jnp.asarray(v)[None] for k, v in _records_of(mixed, i, tag).items()}
        logits = np.asarray(model(batch, model.init_carry(1))[0]["policy_logits"][0])
        logits = logits[np.asarray(batch["action"][0]) < N_ACTIONS]  # one row per interaction step
        top2 = np.sort(logits, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4
        later = np.arange(len(logits)) >= gather
        np.testing.assert_array_equal(logits.argmax(axis=1)[clear & later], mixed.action[i][clear & later])
        greedy_first.append(np.mean(logits.argmax(axis=1)[:gather] == mixed.action[i][:gather]))
    assert min(greedy_first) < 0.9


def test_untried_first_tries_every_action_of_an_observation_before_repeating_one(tasks):
    """``Sampling(untried_first=True)``: while gathering, an observation's actions are all taken
    once before any is taken again there; after the gather steps, and without the option, not."""
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, remat=False, fused_step=True)
    cfg.chunk_size = cfg.tokens_per_step
    graphdef, params = nnx.split(OmniRL(cfg, n_states=N_STATES, n_actions=N_ACTIONS, rngs=nnx.Rngs(0)), nnx.Param)
    runner = ModelRunner(graphdef, params, N_ACTIONS)
    env_params, gather = env_jax.from_tasks(tasks, N_ACTIONS), 60
    play = lambda sampling: jax.device_get(runner.rollout(runner.init_carry(2), env_params, jax.random.key(3),
                                                          n_steps=120, tag=TAG_ID["unk"], sampling=sampling)[0])

    def repeats_too_early(traj, upto):
        """Steps before ``upto`` that repeat an action in an observation with untried actions left."""
        count = 0
        for i in range(2):
            tried = {}
            for t in range(upto):
                seen = tried.setdefault(int(traj.obs[i, t]), set())
                count += int(traj.action[i, t]) in seen and len(seen) < N_ACTIONS
                seen.add(int(traj.action[i, t]))
        return count

    first = play(Sampling(1.0, gather_steps=gather, untried_first=True))
    assert repeats_too_early(first, gather) == 0
    assert repeats_too_early(first, 120) > 0 and repeats_too_early(play(Sampling(1.0, gather_steps=gather)), gather) > 0
