"""InContextAgent: it refuses what the model cannot read in one line, a seed replays it, and the
README's FrozenLake snippet runs as written. (Its steps equal the batched rollout's:
``test_rollout.test_model_stepping_equals_one_pass``.)"""

import contextlib
import io
import re
from pathlib import Path

import pytest
from gymnasium import spaces

from omnirl_jax.agent import InContextAgent
from omnirl_jax.eval.restore import load_model

N_STATES, N_ACTIONS = 16, 5


@pytest.fixture(scope="module")
def model(tiny_workdir):
    return load_model(tiny_workdir)


def test_agent_refuses_what_the_model_cannot_read(model):
    def refused(error, match, call):
        with pytest.raises(error, match=match) as info:
            call()
        assert "\n" not in str(info.value)

    obs, act = spaces.Discrete(N_STATES), spaces.Discrete(4)
    refused(ValueError, "DiscretiseObservation", lambda: InContextAgent(model, spaces.Box(-1, 1, (2,)), act))
    refused(ValueError, "17 observations, the model was trained on 16",
            lambda: InContextAgent(model, spaces.Discrete(17), act))
    refused(ValueError, "6 actions, the model was trained on 5", lambda: InContextAgent(model, obs, spaces.Discrete(6)))
    agent = InContextAgent(model, obs, act, seed=1)
    refused(ValueError, "observation id 16 is outside the model's 16 observation ids", lambda: agent.act(16))
    refused(RuntimeError, "before act", lambda: agent.observe(0.0, 1, False, False))
    first = agent.act(3)
    assert 0 <= first < 4  # the model's fifth action is masked
    refused(RuntimeError, "twice", lambda: agent.act(3))
    agent.observe(1.0, 5, True, False)
    refused(ValueError, "outside", lambda: (agent.act(-1)))


def test_agent_seed_replays_its_actions(model):
    def actions(seed):
        agent = InContextAgent(model, spaces.Discrete(N_STATES), spaces.Discrete(N_ACTIONS), seed=seed)
        out = []
        for t in range(12):
            out.append(agent.act(t % N_STATES))
            agent.observe(0.5, (t + 1) % N_STATES, t % 5 == 4, False)
        return out

    assert actions(0) == actions(0) and actions(0) != actions(1)


def test_agent_gathers_at_temperature_one_first(model):
    """``gather_steps``: the first steps of a task are drawn as at temperature 1 (the same draws
    for the same seed), then at ``temperature``; a negative count is refused in one line."""
    def actions(**sampling):
        agent = InContextAgent(model, spaces.Discrete(N_STATES), spaces.Discrete(N_ACTIONS), seed=0, **sampling)
        out = []
        for t in range(12):
            out.append(agent.act(t % N_STATES))
            agent.observe(0.5, (t + 1) % N_STATES, t % 5 == 4, False)
        return out, agent.sampling

    (gathered, sampling), (sampled, _) = actions(temperature=0.0, gather_steps=6), actions(temperature=1.0)
    assert gathered[:6] == sampled[:6]
    assert [sampling.temperature_at(t) for t in (0, 5, 6, 11)] == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="gather_steps must be >= 0"):
        actions(gather_steps=-1)


def test_agent_takes_untried_actions_first_while_gathering(model):
    """``untried_first``: in one observation, the first ``N_ACTIONS`` gathering draws are all the
    actions; without it the same seed repeats one (the untrained policy is near uniform)."""
    def actions(**sampling):
        agent = InContextAgent(model, spaces.Discrete(N_STATES), spaces.Discrete(N_ACTIONS), seed=0, **sampling)
        out = []
        for _ in range(N_ACTIONS):
            out.append(agent.act(2))
            agent.observe(0.0, 2, False, False)
        return out

    assert sorted(actions(gather_steps=N_ACTIONS, untried_first=True)) == list(range(N_ACTIONS))
    assert len(set(actions(gather_steps=N_ACTIONS))) < N_ACTIONS


def test_readme_frozenlake_snippet(tiny_workdir):
    """The README's agent snippet, as written, with a tiny checkpoint in place of runs/cpu."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "FrozenLake" in b)
    assert len(snippet.strip().splitlines()) < 15
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet.replace('"runs/cpu"', repr(str(tiny_workdir))), {})
    total = float(re.fullmatch(r"return over 500 steps: (\S+)\n", out.getvalue()).group(1))
    assert 0.0 <= total <= 500.0
