"""The rule labels of benchmarks/policy_probe.py (the probe trusts them to be computable targets) and its
reading of a trained model on its own online play."""

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("policy_probe", Path(__file__).parents[1] / "benchmarks" / "policy_probe.py")
policy_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(policy_probe)

NULL = 3  # three real actions, id 3 is the null action


def test_rule_labels():
    # Observations 0/1, three real actions (id 3 null), rewards per step.
    batch = {
        "obs": np.array([[0, 1, 0, 1, 0, 0, 1]]),
        "action": np.array([[0, 1, 1, NULL, 0, 2, 2]]),
        "reward": np.array([[1.0, 0.0, 3.0, 0.0, 1.0, 0.5, 0.0]]),
        "label": np.array([[2, 2, 2, 2, 2, 2, 2]]),
    }
    rule = lambda target: policy_probe.rule_labels(target, batch, n_states=2, n_actions=NULL)
    np.testing.assert_array_equal(rule("previous"), [[NULL, 0, 1, 1, NULL, 0, 2]])
    # Most frequent real action so far (ties to the lowest id); none before the first action.
    np.testing.assert_array_equal(rule("majority"), [[NULL, 0, 0, 1, 1, 0, 0]])
    # The same, per observation; a null action counts for nothing.
    np.testing.assert_array_equal(rule("state_majority"), [[NULL, NULL, 0, 1, 0, 0, 1]])
    np.testing.assert_array_equal(rule("state_last"), [[NULL, NULL, 0, 1, 1, 0, 1]])
    # In observation 0: action 0 averaged 1, action 1 got 3; then action 0 again (1) -> still 1.
    np.testing.assert_array_equal(rule("state_best_reward"), [[NULL, NULL, 0, 1, 1, 1, 1]])
    # Over every observation: action 0 averaged 1 until action 1 reached (0 + 3) / 2.
    np.testing.assert_array_equal(rule("best_reward"), [[NULL, 0, 0, 1, 1, 1, 1]])
    assert rule("label") is batch["label"]


def test_last_reward_differs_from_mean_reward():
    """Action 0 paid 2 then 0 (mean 1, last 0), action 1 paid 0.5: the last-reward rule prefers 1."""
    batch = {"obs": np.zeros((1, 4), int), "action": np.array([[0, 0, 1, 0]]), "reward": np.array([[2.0, 0.0, 0.5, 0.0]])}
    rule = lambda target: policy_probe.rule_labels(target, batch, n_states=1, n_actions=NULL)
    np.testing.assert_array_equal(rule("state_best_last_reward"), [[NULL, 0, 0, 1]])
    np.testing.assert_array_equal(rule("state_best_reward"), [[NULL, 0, 0, 0]])


def test_agreement():
    batch = {"obs": np.zeros((1, 4), int), "action": np.array([[1, 1, 0, 0]]), "reward": np.array([[0.0, 0.0, 2.0, 0.0]])}
    target = np.array([[NULL, 1, 1, 0]])  # equals the previous action everywhere it is defined
    agree = lambda rules: policy_probe.agreement(rules, target, batch, n_states=1, n_actions=NULL)
    assert agree(policy_probe.SHORTCUT) == 1.0
    # Best mean reward so far: only action 1 (paid 0) is known at steps 1 and 2; then action 0 paid 2.
    np.testing.assert_array_equal(policy_probe.rule_labels("state_best_reward", batch, 1, NULL), [[NULL, 1, 1, 0]])
    assert agree(policy_probe.REWARD_RULE) == 1.0
    assert agree(("majority",)) == 2 / 3  # the most frequent action is 1 at steps 1..3; the target ends on 0


def test_trained_agreement_reads_the_shipped_bandit_model():
    """``--checkpoint`` mode on the exported bandit model: one agreement per span of the 256-step
    sequence for the model, each rule and the model against each rule, and the model's greedy arm
    equals the label far above chance (1/5) late in the sequence."""
    edges, table = policy_probe.trained_agreement(str(Path(__file__).parents[1] / "pretrained" / "bandit-5"), 2, seed=7)
    assert edges[0] == 0 and edges[-1] == 256
    assert set(table) >= {"model", "state_best_reward", "model=state_best_reward"}
    assert all(row.shape == (len(edges) - 1,) and np.all((row >= 0) & (row <= 1)) for row in table.values())
    assert table["model"][-1] > 0.5


def test_online_agreement_rereads_the_actions_played(tiny_workdir):
    """Played greedily, the one-pass re-read of the model's own history gives the actions it took:
    the rollout and the re-read see the same tokens."""
    edges, table = policy_probe.online_agreement(str(tiny_workdir), "bandit-5", n_tasks=4, temperature=0.0, seed=0)
    assert list(edges) == [0, 32, 128, 256]
    np.testing.assert_allclose(table["greedy = oracle"], table["acted = oracle"])
    tried = table["actions tried in this observation"]
    assert np.all(np.diff(tried) >= 0) and tried[0] < tried[-1] <= 5
    assert all(np.all((row >= 0) & (row <= 1)) for name, row in table.items() if "=" in name)


def test_training_probe_runs_and_reports(capsys):
    """The probe's own training path, on a tiny model for a few steps: it prints one line per
    target with its loss and curve (it was left broken once by a config move, with no test)."""
    tiny = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.head_dim=0", "train.batch_size=2",
            "train.segment_len=32", "model.chunk_size=16"]
    assert policy_probe.main(["--config", str(Path(__file__).parents[1] / "configs" / "ladder" / "cbandit-8.yaml"),
                              "--set", *tiny, "--targets", "state_best_reward", "--steps", "4", "--tail", "2"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("state_best_reward policy loss ") and "loss per 2 steps: " in line
    assert policy_probe.main(["--config", str(Path(__file__).parents[1] / "configs" / "ladder" / "cbandit-8.yaml"),
                              "--set", *tiny, "loss.plan_steps=2", "--targets", "label", "--steps", "4",
                              "--tail", "2"]) == 0
    assert capsys.readouterr().out.startswith("label, plan first 2 steps: policy loss ")
