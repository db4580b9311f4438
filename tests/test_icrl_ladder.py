"""benchmarks/icrl_ladder.py: the budget, crossing and extrapolation arithmetic behind its tables."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import icrl_ladder as ladder  # noqa: E402


def test_every_rung_has_a_config_of_its_own_size():
    from omnirl_jax.config import load_config

    sizes = {name: load_config(str(rung.config)).data.generator.n_states for name, rung in ladder.RUNGS.items()}
    assert sizes == {"bandit": 1, "cbandit-8": 8, "anymdp-8": 8, "anymdp-16": 16}


def test_budget_steps_fall_on_checkpoints():
    assert ladder.budget_steps(1600, [0.25, 0.5, 1], 400) == [400, 800, 1600]
    assert ladder.budget_steps(1000, [0.01, 1], 300) == [300, 1000]  # never 0, the end always kept


def test_paired_difference_and_interval():
    a, b = np.array([1.0, 2.0, 3.0, np.nan]), np.array([0.0, 1.0, 1.0, 5.0])
    mean, half, n = ladder.paired(a, b)
    assert n == 3 and mean == pytest.approx(4 / 3)
    assert half == pytest.approx(1.96 * np.std([1, 1, 2], ddof=1) / np.sqrt(3))


def test_crossing_reads_the_log_line():
    # score = 0.1 * log2(steps): reaches 0.5 at 32 steps
    assert ladder.crossing([4, 8, 16], [0.2, 0.3, 0.4], 0.5) == pytest.approx(32)
    assert ladder.crossing([4, 8], [0.3, 0.2], 0.5) is None  # falling: no crossing
    assert ladder.crossing([4], [0.3], 0.5) is None
    # A rise within the scores' noise is no trend (the 8-state rung: -0.004, -0.001, -0.003).
    assert ladder.crossing([750, 1500, 3000], [-0.004, -0.001, -0.003], 0.347, noise=0.17) is None
    assert ladder.crossing([4, 8, 16], [0.2, 0.3, 0.4], 0.5, noise=0.1) == pytest.approx(32)


def test_extrapolate_is_a_power_law_in_pairs():
    results = [{"pairs": 5, "crossing_tokens": 1e6}, {"pairs": 40, "crossing_tokens": 8e6},
               {"pairs": 80, "crossing_tokens": None}]
    assert ladder.extrapolate(results, 80) == pytest.approx(16e6)  # linear in pairs here
    assert ladder.extrapolate(results[:1] + results[2:], 80) is None
