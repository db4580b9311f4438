"""The rule labels of benchmarks/policy_probe.py (the probe trusts them to be computable targets)."""

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("policy_probe", Path(__file__).parents[1] / "benchmarks" / "policy_probe.py")
policy_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(policy_probe)

NULL = 3  # three real actions, id 3 is the null action


def test_rule_labels():
    action = np.array([[0, 1, 1, NULL, 0, 0, 2]])
    label = np.array([[2, 2, 2, 2, 2, 2, 2]])
    previous = policy_probe.rule_labels("previous", action, label, NULL)
    np.testing.assert_array_equal(previous, [[NULL, 0, 1, 1, NULL, 0, 0]])
    # Most frequent real action so far (ties to the lowest id); none before the first action.
    majority = policy_probe.rule_labels("majority", action, label, NULL)
    np.testing.assert_array_equal(majority, [[NULL, 0, 0, 1, 1, 0, 0]])
    assert policy_probe.rule_labels("label", action, label, NULL) is label
