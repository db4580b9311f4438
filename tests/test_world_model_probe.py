"""The count estimators of benchmarks/world_model_probe.py (the references the model is judged by)."""

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("world_model_probe",
                                              Path(__file__).parents[1] / "benchmarks" / "world_model_probe.py")
world_model_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(world_model_probe)


def test_count_nll_by_hand():
    # Two states, two actions (id 2 null); (0, 0) leads to 1 twice, then a null step that is skipped.
    batch = {"obs": np.array([[0, 0, 1]]), "action": np.array([[0, 0, 2]]), "next_obs": np.array([[1, 1, 0]])}
    state, pair = world_model_probe.count_nll(batch, n_states=2, n_actions=2, alpha=1.0)
    # Step 0 knows nothing (1/2 each); step 1: state (1 + 1) / (1 + 2), pair (1 + 2 * 2/3) / (1 + 2).
    assert np.isclose(state, (np.log(2) + np.log(3 / 2)) / 2)
    assert np.isclose(pair, (np.log(2) + np.log(9 / 7)) / 2)


def test_pair_counts_win_when_actions_differ():
    # In state 0, action 0 always leads to 1 and action 1 to 0: only the pair estimate can tell.
    rng = np.random.default_rng(0)
    action = rng.integers(0, 2, (4, 200))
    batch = {"obs": np.zeros((4, 200), int), "action": action, "next_obs": 1 - action}
    state, pair = world_model_probe.count_nll(batch, n_states=2, n_actions=2, alpha=0.3)
    assert pair < 0.2 < 0.6 < state
