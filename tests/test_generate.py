"""SequenceGenerator: determinism under any partition/chunking, the step schema, config errors."""

import numpy as np
import pytest

from omnirl_jax.data.generate import STEP_DTYPES, GeneratorConfig, SequenceGenerator, oracle_actions
from omnirl_jax.data.policies import POLICY_NAMES
from omnirl_jax.data.schema import TAG_ID

N_ACTIONS = 5


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys() == STEP_DTYPES.keys()
    for name in a:
        assert a[name].dtype == STEP_DTYPES[name]
        assert a[name].tobytes() == b[name].tobytes(), name


def concat(*chunks):
    return {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}


def test_same_seed_same_bytes():
    cfg = GeneratorConfig(n_states=16, seq_len=3000)
    assert_same(SequenceGenerator(cfg, 3, [0, 5, 9]).run(3000), SequenceGenerator(cfg, 3, [0, 5, 9]).run(3000))
    other = SequenceGenerator(cfg, 4, [0, 5, 9]).run(3000)
    assert other["obs"].tobytes() != SequenceGenerator(cfg, 3, [0, 5, 9]).run(3000)["obs"].tobytes()


def test_chunks_equal_one_run_and_last_obs_is_next_record():
    cfg = GeneratorConfig(n_states=16, seq_len=5000)
    whole = SequenceGenerator(cfg, 1, [2, 7]).run(5000)
    g = SequenceGenerator(cfg, 1, [2, 7])
    parts = []
    for n in (1, 999, 0, 1700, 2300):
        parts.append(g.run(n))
        if g.steps_done < 5000:
            np.testing.assert_array_equal(g.last_obs, whole["obs"][:, g.steps_done])
    assert_same(concat(*parts), whole)
    assert g.last_obs.dtype == STEP_DTYPES["obs"]


def test_sequence_independent_of_its_batch():
    cfg = GeneratorConfig(n_states=16, min_states=10, seq_len=2000)
    batch = SequenceGenerator(cfg, 11, [4, 1, 30]).run(2000)
    for j, sid in enumerate([4, 1, 30]):
        alone = SequenceGenerator(cfg, 11, [sid]).run(2000)
        assert_same({k: v[j : j + 1] for k, v in batch.items()}, alone)


def test_run_past_seq_len_raises():
    g = SequenceGenerator(GeneratorConfig(n_states=8, seq_len=10), 0, [0])
    g.run(10)
    with pytest.raises(ValueError, match="seq_len"):
        g.run(1)


@pytest.mark.parametrize("family", ["anymdp", "garnet"])
def test_schema_invariants(family):
    cfg = GeneratorConfig(n_states=16, seq_len=6000, task_family=family)
    ids = list(range(6))
    g = SequenceGenerator(cfg, 5, ids)
    out = g.run(cfg.seq_len)
    null = N_ACTIONS
    for j, task in enumerate(g.tasks):
        obs, action, label, reward = out["obs"][j], out["action"][j], out["label"][j], out["reward"][j]
        end, tag, prompt = out["episode_end"][j], out["tag"][j], out["prompt"][j]
        assert (prompt == TAG_ID["opt3"]).all()
        assert tag.max() < len(TAG_ID) and action.max() <= null and obs.max() < cfg.n_states
        state_of = {int(o): s for s, o in enumerate(task.state_mapping)}
        states = np.array([state_of[int(o)] for o in obs])
        terminal_record = action == null
        # null action exactly on records of terminal states, with null label and zero reward
        np.testing.assert_array_equal(terminal_record, task.terminal[states])
        assert (label[terminal_record] == null).all() and (reward[terminal_record] == 0).all()
        assert end[terminal_record].all()
        # a terminal record follows the action that reached it
        idx = np.flatnonzero(terminal_record)
        assert (idx > 0).all() and not terminal_record[idx - 1].any()
        # labels are the opt3 oracle's greedy action in the true state
        acting = ~terminal_record
        np.testing.assert_array_equal(label[acting], oracle_actions(task)[3][states[acting]])
        # episodes: starts after every end, lengths within max_steps, truncations exactly max_steps
        starts = np.flatnonzero(np.concatenate([[True], end[:-1]]))
        assert set(states[starts]) <= set(task.start_states.tolist())
        bounds = np.append(starts, len(obs))
        for a, b in zip(bounds[:-1], bounds[1:]):
            n_actions_taken = int(acting[a:b].sum())
            assert n_actions_taken <= task.max_steps
            if b < len(obs) and not terminal_record[b - 1]:
                assert n_actions_taken == task.max_steps  # truncated: no terminal record
        # the record after an action is its consequence, except after an episode's end
        t = np.flatnonzero(acting[:-1] & ~end[:-1])
        assert (task.transition[states[t], action[t], states[t + 1]] > 0).all()
        if family == "garnet":
            assert not terminal_record.any()


def test_tag_hiding_frequencies():
    cfg = GeneratorConfig(n_states=8, seq_len=4000, policy_weights={"opt1": 1.0}, label_policy="opt1")
    out = SequenceGenerator(cfg, 0, range(400)).run(cfg.seq_len)
    acting = out["action"] != N_ACTIONS
    hidden = (out["tag"] == TAG_ID["unk"]) & acting
    shown = (out["tag"] == TAG_ID["opt1"]) & acting
    assert (hidden | shown)[acting].all()
    whole = ~shown.any(axis=1)
    # sequence hiding 0.15, plus sequences whose every episode is hidden (negligible here)
    assert abs(whole.mean() - 0.15) < 0.06
    ep_hidden, ep_total = 0, 0
    for j in np.flatnonzero(~whole):
        ends = np.flatnonzero(out["episode_end"][j])
        for a, b in zip(np.r_[0, ends[:-1] + 1], ends + 1):
            steps = acting[j, a:b]
            if steps.any():
                ep_total += 1
                ep_hidden += bool(hidden[j, a:b][steps].all())
    assert ep_total > 2000
    assert abs(ep_hidden / ep_total - 0.15) < 0.03
    # the prompt names the label policy; with opt1 acting, actions equal labels
    assert (out["prompt"] == TAG_ID["opt1"]).all()
    np.testing.assert_array_equal(out["action"], out["label"])


def test_tiny_and_wide_configs_run():
    for cfg in (GeneratorConfig(n_states=8, n_actions=2, seq_len=500),
                GeneratorConfig(n_states=64, min_states=8, seq_len=500, task_family="garnet"),
                GeneratorConfig(n_states=32, seq_len=500, policy_weights={name: 1.0 for name in POLICY_NAMES})):
        out = SequenceGenerator(cfg, 0, [0, 1]).run(500)
        assert out["obs"].shape == (2, 500) and out["obs"].max() < cfg.n_states


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_states", 4),
        ("n_states", 70000),
        ("n_actions", 1),
        ("n_actions", 255),
        ("min_states", 40),
        ("seq_len", 0),
        ("task_family", "pomdp"),
        ("policy_weights", {"opt9": 1.0}),
        ("policy_weights", {"opt1": -1.0}),
        ("policy_weights", {"opt1": 0.0}),
        ("policy_weights", {}),
        ("label_policy", "qlearning"),
        ("tag_hide_sequence_prob", 1.5),
        ("tag_hide_episode_prob", -0.1),
        ("policy_redraw_prob", 2),
        ("q_alpha", 0.0),
        ("q_gamma_range", (0.9, 1.0)),
        ("mbrl_gamma_range", (0.99, 0.9)),
        ("mbrl_sweeps", 0),
        ("noise_range", (0.5,)),
        ("halflife_range", (0.0, 10.0)),
        ("drift_range", (-1.0, 1.0)),
        ("min_forward", 0),
    ],
)
def test_bad_config_one_line_error_naming_the_field(field, value):
    cfg = GeneratorConfig(**{"n_states": 32, field: value})
    with pytest.raises(ValueError) as err:
        cfg.validate()
    message = str(err.value)
    assert field in message and "\n" not in message
    with pytest.raises(ValueError):
        SequenceGenerator(cfg, 0, [0])


@pytest.mark.parametrize("seed, ids", [(-1, [0]), (0, []), (0, [-3]), (0, [[1, 2]]), (0, [0.5])])
def test_bad_seed_or_ids(seed, ids):
    with pytest.raises(ValueError):
        SequenceGenerator(GeneratorConfig(n_states=8), seed, ids)


def test_bandit_sequences_are_all_pulls():
    """n_states = 1: every record is a pull (no null terminal records), every pull ends an episode,
    and the label is the sequence's one best arm."""
    out = SequenceGenerator(GeneratorConfig(n_states=1, n_actions=5, seq_len=600), 0, range(16)).run(600)
    assert not np.any(out["obs"]) and np.all(out["action"] < 5) and np.all(out["episode_end"])
    assert np.all(out["label"] == out["label"][:, :1]) and len(np.unique(out["label"][:, 0])) > 1
    best_seen = 0
    for action, reward, label in zip(out["action"], out["reward"], out["label"][:, 0]):
        means = [reward[action == a].mean() if np.any(action == a) else -np.inf for a in range(5)]
        best_seen += int(np.argmax(means) == label)
    assert best_seen >= 12  # the label is (nearly always) the arm that paid best


@pytest.mark.parametrize("policy", ["qlearning", "mbrl"])
def test_bandit_learners_learn_the_best_arm(policy):
    """A learner's pulls concentrate on the best arm (chance: 1 in 5). The count model once marked
    the bandit's one state terminal and never planned it (best arm 21 % of its late pulls)."""
    cfg = GeneratorConfig(n_states=1, seq_len=256, policy_weights={policy: 1.0}, q_alpha=0.1,
                          halflife_range=(25.0, 250.0), policy_redraw_prob=0.0)
    out = SequenceGenerator(cfg, 0, range(64)).run(256)
    late = out["action"][:, -64:] == out["label"][:, -64:]
    assert late.mean() > 0.35


def test_contextual_bandit_sequences():
    """cbandit: every record a pull in a context drawn uniformly, labelled with that context's best
    arm; the count-model learner's late pulls find it (chance 1 in 5)."""
    cfg = GeneratorConfig(n_states=4, seq_len=512, task_family="cbandit", policy_weights={"mbrl": 1.0},
                          halflife_range=(25.0, 250.0), policy_redraw_prob=0.0)
    gen = SequenceGenerator(cfg, 0, range(32))
    out = gen.run(512)
    assert np.all(out["action"] < N_ACTIONS) and np.all(out["episode_end"])
    assert np.allclose(np.bincount(out["obs"].ravel(), minlength=4) / out["obs"].size, 0.25, atol=0.01)
    best = np.stack([t.reward[:, :, 0].argmax(axis=1) for t in gen.tasks])  # contexts are their own ids
    assert np.array_equal(out["label"], np.take_along_axis(best, out["obs"].astype(int), axis=1))
    assert (out["action"][:, -128:] == out["label"][:, -128:]).mean() > 0.5


@pytest.mark.parametrize("fields", [{"n_states": 4}, {"n_states": 1, "task_family": "garnet"}, {"n_states": 1, "min_states": 8},
                                    {"n_states": 1, "task_family": "cbandit", "cbandit_rewards": "bernoulli"}])
def test_bandit_config_errors(fields):
    with pytest.raises(ValueError, match="n_states|cbandit_rewards"):
        GeneratorConfig(**fields).validate()
