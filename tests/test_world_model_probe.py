"""The reference estimators of benchmarks/world_model_probe.py (the references the model is judged by)."""

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("world_model_probe",
                                              Path(__file__).parents[1] / "benchmarks" / "world_model_probe.py")
world_model_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(world_model_probe)


def test_reference_nll_by_hand():
    # Two states, two actions (id 2 null); (0, 0) leads to 1 twice, then a null step that is skipped.
    batch = {"obs": np.array([[0, 0, 1]]), "action": np.array([[0, 0, 2]]), "next_obs": np.array([[1, 1, 0]])}
    state, pair, recall = world_model_probe.reference_nll(batch, n_states=2, n_actions=2, alpha=1.0)
    # Step 0 knows nothing (1/2 each); step 1: state (1 + 1) / (1 + 2), pair (1 + 2 * 2/3) / (1 + 2),
    # recall 1/2 on the last successor (1) + 1/4 spread evenly.
    assert np.isclose(state, (np.log(2) + np.log(3 / 2)) / 2)
    assert np.isclose(pair, (np.log(2) + np.log(9 / 7)) / 2)
    assert np.isclose(recall, (np.log(2) + np.log(4 / 3)) / 2)


def test_recall_misses_what_counts_average():
    # State 0 leads to 1 three times in four, in a random order: counting learns 3/4, recall of the
    # last visit is wrong whenever the last successor was the rare one.
    rng = np.random.default_rng(0)
    next_obs = (rng.random((4, 400)) < 0.75).astype(int)
    batch = {"obs": np.zeros((4, 400), int), "action": np.zeros((4, 400), int), "next_obs": next_obs}
    state, _, recall = world_model_probe.reference_nll(batch, n_states=2, n_actions=2, alpha=0.3)
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert abs(state - entropy) < 0.03 and recall > entropy + 0.05


def test_pair_counts_win_when_actions_differ():
    # In state 0, action 0 always leads to 1 and action 1 to 0: only the pair estimate can tell.
    rng = np.random.default_rng(0)
    action = rng.integers(0, 2, (4, 200))
    batch = {"obs": np.zeros((4, 200), int), "action": action, "next_obs": 1 - action}
    state, pair, _ = world_model_probe.reference_nll(batch, n_states=2, n_actions=2, alpha=0.3)
    assert pair < 0.2 < 0.6 < state
