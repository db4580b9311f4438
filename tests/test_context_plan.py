"""The context plan (omnirl_jax.data.context_plan): value iteration on a sequence's own records."""

import numpy as np

from omnirl_jax.data import context_plan
from omnirl_jax.data.generate import GeneratorConfig, SequenceGenerator

NULL = 3  # three real actions, id 3 is the null action


def plan(obs, action, reward, episode_end, n_obs=2, chunks=(None,)):
    st = context_plan.allocate(1, n_obs, NULL)
    records = [np.array([x]) for x in (obs, action, reward, episode_end)]
    out, edges = np.zeros((1, len(obs)), np.uint8), [0, *[c for c in chunks if c], len(obs)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        chunk = np.zeros((1, hi - lo), np.uint8)
        context_plan.label_chunk(st, *(r[:, lo:hi] for r in records), 0.994, chunk)
        out[:, lo:hi] = chunk
    return out[0].tolist()


def test_plan_looks_ahead_where_the_best_reward_does_not():
    """State 0: action 0 pays 1 and stays, action 1 pays 0 and leads to state 1, where action 0
    pays 10 and leads back. Once both are known the plan takes action 1 in state 0 (the best
    immediate reward is action 0's); with nothing tried in a state there is no plan. The same
    however the records are cut into chunks (the pending transition is carried)."""
    obs, action, reward, end = [0, 0, 1, 0], [0, 1, 0, 0], [1.0, 0.0, 10.0, 1.0], [False] * 4
    assert plan(obs, action, reward, end) == [NULL, 0, NULL, 1]
    assert plan(obs, action, reward, end, chunks=(1,)) == plan(obs, action, reward, end, chunks=(2, 3)) == [NULL, 0, NULL, 1]


def test_an_episode_end_carries_no_transition():
    """The same records, but action 1's step ends its episode (truncated: state 1 is a reset, not
    its consequence): action 1 is then worth its reward, 0, and action 0 (1) is the plan."""
    assert plan([0, 0, 1, 0], [0, 1, 0, 0], [1.0, 0.0, 10.0, 1.0], [False, True, False, False]) == [NULL, 0, NULL, 0]


def test_generated_plan_tends_to_the_label_and_is_off_by_default():
    """On 8-state AnyMDP sequences the plan equals the opt3 label on most late steps (the
    module doc's figures), far above chance (1/5); chunking does not change it; off by default."""
    cfg = GeneratorConfig(n_states=8, n_actions=5, seq_len=1024, plan_label=True,
                          policy_weights={"qlearning": 0.3, "mbrl": 0.3, "random_drift": 0.4})
    whole = SequenceGenerator(cfg, seed=3, sequence_ids=range(8)).run(1024)
    parts = SequenceGenerator(cfg, seed=3, sequence_ids=range(8))
    np.testing.assert_array_equal(np.concatenate([parts.run(300)["plan"], parts.run(724)["plan"]], axis=1), whole["plan"])
    late = whole["label"][:, 512:] < 5
    assert np.mean(whole["plan"][:, 512:][late] == whole["label"][:, 512:][late]) > 0.6
    cfg.plan_label = False
    assert np.all(SequenceGenerator(cfg, seed=3, sequence_ids=range(2)).run(64)["plan"] == 5)


def test_plan_label_off_keeps_the_data_identity_of_runs_before_it():
    """A run started before ``plan_label`` existed resumes: off, the field is not part of the
    identity its loader checks (the records are the same); on, it is."""
    from omnirl_jax.data.shards import config_dict

    cfg = GeneratorConfig()
    assert cfg.identity() == {k: v for k, v in config_dict(cfg).items() if k != "plan_label"}
    assert GeneratorConfig(plan_label=True).identity()["plan_label"] is True
