"""Behaviour policies inside the generator: tags, schedules, redraws, and the shared learner kernels."""

import numpy as np
import pytest

from anymdp_gym.solvers import ModelBasedSolver, QLearningSolver
from omnirl_jax.data.generate import GeneratorConfig, SequenceGenerator, oracle_actions
from omnirl_jax.data.schema import TAG_ID

NULL = 5
NO_HIDING = dict(tag_hide_sequence_prob=0.0, tag_hide_episode_prob=0.0)


def generate(policy_weights, n_seq=4, seq_len=4000, n_states=16, **overrides):
    cfg = GeneratorConfig(n_states=n_states, seq_len=seq_len, policy_weights=policy_weights,
                          **{**NO_HIDING, **overrides})
    g = SequenceGenerator(cfg, 0, range(n_seq))
    return g, g.run(seq_len)


def oracle_of_records(task, obs):
    """``[4, len(obs)]`` oracle actions in the states behind the observations."""
    state_of = np.zeros(task.n_states, np.int64)
    state_of[task.state_mapping] = np.arange(task.n_active)
    return oracle_actions(task)[:, state_of[obs]]


@pytest.mark.parametrize("k", range(4))
def test_oracle_policies_act_greedily_and_tag_themselves(k):
    g, out = generate({f"opt{k}": 1.0}, label_policy="opt3")
    for j, task in enumerate(g.tasks):
        acting = out["action"][j] != NULL
        expected = oracle_of_records(task, out["obs"][j])
        np.testing.assert_array_equal(out["action"][j][acting], expected[k][acting])
        assert (out["tag"][j] == k).all()


def test_noisy_oracle_tags_noise_as_rnd_and_noise_decays():
    g, out = generate({"noisy_oracle": 1.0}, n_seq=6, seq_len=20_000, halflife_range=(2000.0, 2000.0),
                      noise_range=(0.8, 0.8))
    for j, task in enumerate(g.tasks):
        k = int(g._state.noisy_oracle[j])
        tag, acting = out["tag"][j], out["action"][j] != NULL
        assert set(np.unique(tag)) <= {k, TAG_ID["rnd"]}
        greedy = acting & (tag == k)
        np.testing.assert_array_equal(out["action"][j][greedy], oracle_of_records(task, out["obs"][j])[k][greedy])
        noise = (tag == TAG_ID["rnd"]) & acting
        early, late = noise[:2000][acting[:2000]].mean(), noise[-4000:][acting[-4000:]].mean()
        assert abs(early - 0.8 * 0.75) < 0.08 and late < 0.01


def test_mbrl_oracle_hands_over_more_and_more():
    g, out = generate({"mbrl_oracle": 1.0}, n_seq=4, seq_len=20_000, halflife_range=(3000.0, 3000.0))
    for j in range(4):
        k = int(g._state.mix_oracle[j])
        tag, acting = out["tag"][j], out["action"][j] != NULL
        assert set(np.unique(tag)) <= {k, TAG_ID["exp1"]}
        handed = tag == k
        early, late = handed[:1000][acting[:1000]].mean(), handed[-3000:][acting[-3000:]].mean()
        assert early < 0.25 and late > 0.95


@pytest.mark.parametrize("name, tag", [("qlearning", "exp2"), ("mbrl", "exp1"), ("random_drift", "rnd")])
def test_learner_and_random_tags(name, tag):
    _, out = generate({name: 1.0}, n_seq=2, seq_len=2000)
    assert (out["tag"] == TAG_ID[tag]).all()


def test_redraws_happen_at_episode_boundaries_with_the_configured_rate():
    weights = {f"opt{k}": 1.0 for k in range(4)}
    g, out = generate(weights, n_seq=40, seq_len=5000, n_states=8)
    changes, boundaries = 0, 0
    for j in range(40):
        acting = out["action"][j] != NULL
        tag, end = out["tag"][j], out["episode_end"][j]
        t = np.flatnonzero(acting)
        same_episode = ~np.array([end[a:b].any() for a, b in zip(t[:-1], t[1:])])
        assert (tag[t[1:]][same_episode] == tag[t[:-1]][same_episode]).all()
        changes += int((tag[t[1:]] != tag[t[:-1]])[~same_episode].sum())
        boundaries += int((~same_episode).sum())
    assert boundaries > 3000
    assert abs(changes / boundaries - 0.2 * 0.75) < 0.03  # redraw 0.2, new policy differs 3/4


def replay(out, j, solver):
    """Feed sequence ``j``'s recorded transitions to a single-env solver.

    Returns the ``(obs, action)`` of the action records whose successor is not recorded (the
    last record, and truncations, where the next record is a reset): the batched learners saw
    those transitions, the replay cannot.
    """
    obs, action, reward, end = out["obs"][j], out["action"][j], out["reward"][j], out["episode_end"][j]
    unseen = []
    for t in np.flatnonzero(action != NULL):
        if t + 1 == len(obs) or end[t]:
            unseen.append((int(obs[t]), int(action[t])))
            continue
        solver.update(int(obs[t]), int(action[t]), float(reward[t]), int(obs[t + 1]), bool(action[t + 1] == NULL))
    return unseen


def test_batched_learners_equal_single_env_solvers_on_the_same_transitions():
    # sequences shorter than any episode limit (>= 100 steps): no truncation, so the only unseen
    # successor is the last one and no Q-value bootstraps from an unreplayed update
    g, out = generate({"qlearning": 1.0, "mbrl": 1.0}, n_seq=20, seq_len=99, q_alpha=0.2)
    for j, task in enumerate(g.tasks):
        q = QLearningSolver(task.n_states, 5, alpha=float(g._state.q_alpha[j]), gamma=float(g._state.q_gamma[j]))
        m = ModelBasedSolver(task.n_states, 5)
        unseen = replay(out, j, q)
        assert replay(out, j, m) == unseen and len(unseen) <= 1
        n = task.n_active
        counts = g._state.n_sa[j, :n].copy()
        mask = np.ones((n, 5), bool)
        for o, a in unseen:
            s = int(np.flatnonzero(task.state_mapping == o)[0])
            mask[s, a] = False
            counts[s, a] -= 1
        # rewards are recorded in float32, the batch learned from float64 ones
        np.testing.assert_allclose(g._state.q[j, :n][mask], q.q[task.state_mapping][mask], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(counts, m.model.n_sa[task.state_mapping])
