"""``omnirl-eval``: in-context RL of a trained OmniRL checkpoint on held-out task suites, against
each suite's baselines (random, oracle, tabular Q-learning, model-based RL and rejax's PPO; on
bandits epsilon-greedy, UCB1 and Thompson sampling) on the same tasks and step budgets.

Modes (spec section 4), all acting with prompt ``opt3``, the model's own steps tagged ``unk``:

* **online**: the context is the model's own history from an empty start;
* **offline**: first a context of ``suite.context_steps`` records of a sub-optimal policy — the
  myopic oracle ``opt1`` (gamma 0.5) with 50 % uniformly random actions, tagged as the data
  generator tags such a noisy oracle (``opt1`` / ``rnd``) — then the model acts;
* **imitation**: first a context of ``opt3`` demonstrations (tag ``opt3``), then the model acts.

After a context the model (and each learning baseline, which first ``update``s on the context's
transitions) starts a fresh episode. Actions are sampled from the policy head's softmax at
``--temperature`` (1: the distribution the model was trained to output; 0: greedy; by default the
run's ``eval.temperature``), the first ``--gather-steps`` of them at 1 (default the run's
``eval.gather_steps``), with ``--untried-first`` among an observation's untried actions first
(``rollout.Sampling``). Live suites
(``mountaincar``, ``pendulum``: Gymnasium envs with no table, ``live`` module doc) play online
only, the model through ``omnirl_jax.agent.InContextAgent`` and each baseline of
``live.LIVE_BASELINES`` through the envs' own ``step``; the other suites run on tables
(``rollout``, ``baselines.TABLE_BASELINES``).

Scoring (``baselines`` module doc for the reference returns, ``live`` for live suites): per task,
the returns of the episodes that end inside each window of ``suite.window`` interaction steps are
averaged and normalised, ``(R - R_random) / (R_oracle - R_random)``; a curve point is the mean
over tasks with a 95 % normal confidence interval. A task's *score* is the mean of its windows (the area under
its learning curve over the whole budget). Outputs under ``--out``: ``curves.csv``,
``summary.csv`` and one PNG per suite and mode; a summary table is printed.
"""

from __future__ import annotations

import csv
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np
from gymnasium import spaces

from anymdp_gym.jax import dynamics as env_jax
from omnirl_jax.agent import InContextAgent
from omnirl_jax.config import EvalConfig
from omnirl_jax.data.schema import TAG_ID
from omnirl_jax.eval import live
from omnirl_jax.eval.baselines import (CONTEXT_FREE, TABLE_BASELINES, TablePlay, normalise, oracle_table,
                                       reference_returns)
from omnirl_jax.eval.restore import EvalError, LoadedModel, load_model
from omnirl_jax.eval.rollout import Sampling, behaviour_records
from omnirl_jax.eval.suites import EVAL_SEED, LIVE_MODES, MODES, Suite, get_suite
from omnirl_jax.workdir import writable_dir

AGENTS = ("model",) + tuple(dict.fromkeys((*TABLE_BASELINES, *live.LIVE_BASELINES)))
OFFLINE_EPS = 0.5
OFFLINE_GAMMA = 0.5


# --------------------------------------------------------------------------- scoring
def window_returns(reward: np.ndarray, done: np.ndarray, window: int) -> np.ndarray:
    """``[B, n_windows]`` mean return of the episodes ending in each window of steps (NaN if none).

    Only complete episodes count (the unfinished one at the end of the budget is dropped)."""
    reward, done = np.asarray(reward, np.float64), np.asarray(done, bool)
    n_tasks, n_steps = reward.shape
    n_windows = max(n_steps // window, 1)
    out = np.full((n_tasks, n_windows), np.nan)
    for i in range(n_tasks):
        ends = np.flatnonzero(done[i])
        if ends.size == 0:
            continue
        totals = np.cumsum(reward[i])[ends]
        returns = np.diff(totals, prepend=0.0)
        bins = np.minimum(ends // window, n_windows - 1)
        counts = np.bincount(bins, minlength=n_windows)
        sums = np.bincount(bins, weights=returns, minlength=n_windows)
        with np.errstate(invalid="ignore"):
            out[i] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def mean_ci(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, 95 % half-width, n)`` over ``axis``, ignoring NaN (normal approximation)."""
    n = np.sum(~np.isnan(values), axis=axis)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, on purpose
        half = 1.96 * np.nanstd(values, axis=axis, ddof=1) / np.sqrt(n)
    return _nanmean(values, axis=axis), np.where(n > 1, half, np.nan), n


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


@dataclasses.dataclass
class Result:
    """One agent on one group of tasks in one mode: per-task normalised window returns."""

    suite: str
    group: str
    mode: str
    agent: str
    window: int
    curves: np.ndarray  # [n_tasks, n_windows]

    @property
    def scores(self) -> np.ndarray:
        """``[n_tasks]`` mean of each task's windows (NaN for a task that cannot be normalised)."""
        return _nanmean(self.curves, axis=1)


# --------------------------------------------------------------------------- running
def _context(mode: str, tasks, env_params, n_obs: int, n_records: int, key):
    """Behaviour records shown before acting (None in online mode)."""
    if mode == "online":
        return None
    n = len(tasks)
    if mode == "offline":
        greedy = np.stack([oracle_table(t, n_obs, OFFLINE_GAMMA) for t in tasks])
        eps, tag = OFFLINE_EPS, TAG_ID["opt1"]
    else:
        greedy = np.stack([oracle_table(t, n_obs) for t in tasks])
        eps, tag = 0.0, TAG_ID["opt3"]
    return behaviour_records(env_params, greedy, np.full(n, eps, np.float32), np.full(n, tag, np.int32), key,
                             n_records=n_records)


def evaluate_group(model: Optional[LoadedModel], suite: Suite, group: str, modes: Sequence[str], agents: Sequence[str], *,
                   n_obs: int, n_actions: int, n_tasks: Optional[int], steps: int, window: int, context_steps: int,
                   seed: int, sampling: Sampling, log=print) -> list[Result]:
    """Every agent in every mode on one group of a suite's tasks."""
    tasks = suite.tasks(group, n_obs, n_tasks)
    env_params = env_jax.from_tasks(tasks, n_actions)
    refs = np.array([reference_returns(t) for t in tasks])
    key = jax.random.key(seed)
    results = []
    k_table, k_modes = jax.random.split(key)
    tables = {}
    for i, agent in enumerate(a for a in agents if a in CONTEXT_FREE):
        game = TablePlay(tasks, env_params, n_obs, jax.random.fold_in(k_table, i), steps, seed)
        tables[agent] = TABLE_BASELINES[agent](game)
    for m, mode in enumerate(modes):
        k_ctx, k_model, k_solver = jax.random.split(jax.random.fold_in(k_modes, m), 3)
        context = _context(mode, tasks, env_params, n_obs, context_steps, k_ctx)
        for agent in agents:
            start = time.perf_counter()
            if agent == "model":
                runner = model.runner
                carry = runner.init_carry(len(tasks))
                if context is not None:
                    carry = runner.prefill(carry, context)
                traj, _ = runner.rollout(carry, env_params, k_model, n_steps=steps, tag=TAG_ID["unk"],
                                         sampling=sampling)
            elif agent in tables:
                traj = tables[agent]
            else:
                game = TablePlay(tasks, env_params, n_obs, jax.random.fold_in(k_solver, AGENTS.index(agent)), steps, seed,
                                 context)
                traj = TABLE_BASELINES[agent](game)
            traj = jax.device_get(traj)
            results.append(_scored(suite, group, mode, agent, window, traj.reward, traj.done, refs, log,
                                   time.perf_counter() - start))
    return results


def evaluate_live_group(model: Optional[LoadedModel], suite: Suite, group: str, agents: Sequence[str], *, n_obs: int,
                        n_tasks: Optional[int], steps: int, window: int, seed: int, sampling: Sampling,
                        log=print) -> list[Result]:
    """Every agent, online, on one group of a live suite (``live`` module doc)."""
    instances = suite.instances(group, n_obs, n_tasks)
    task = instances[0].task
    start = time.perf_counter()
    r_random, r_oracle = live.reference_returns(task, seed=EVAL_SEED)
    log(f"  {group:16s} reference returns: random {r_random:.2f}, oracle {r_oracle:.2f} "
        f"({live.REFERENCE_EPISODES} episodes each, {time.perf_counter() - start:.1f} s)")
    refs = np.tile([r_random, r_oracle], (len(instances), 1))
    results = []
    for agent in agents:
        start = time.perf_counter()
        game = live.LivePlay(instances, n_obs, steps, seed, label=f"{group} {agent}")
        if agent == "model":
            observations, actions = spaces.Discrete(n_obs), spaces.Discrete(task.size[1])
            reward, done = live.play(lambda envs: InContextAgent(model, observations, actions, num_envs=len(envs),
                                                                 temperature=sampling.temperature,
                                                                 gather_steps=sampling.gather_steps,
                                                                 untried_first=sampling.untried_first, seed=seed), game)
        else:
            reward, done = live.LIVE_BASELINES[agent](game)
        results.append(_scored(suite, group, "online", agent, window, reward, done, refs, log,
                               time.perf_counter() - start))
    return results


def _scored(suite: Suite, group: str, mode: str, agent: str, window: int, reward, done, refs: np.ndarray, log,
            seconds: float) -> Result:
    """The normalised window returns of one agent's play, logged as one line."""
    curves = normalise(window_returns(reward, done, window), refs[:, 0], refs[:, 1])
    result = Result(suite.name, group, mode, agent, window, curves)
    mean, half, n = mean_ci(result.scores)
    log(f"  {group:16s} {mode:9s} {agent:12s} score {mean:+.3f} ± {half:.3f} ({n} tasks, {seconds:.1f} s)")
    return result


# --------------------------------------------------------------------------- reporting
def write_csv(results: Sequence[Result], out: Path) -> tuple[Path, Path]:
    """``curves.csv`` (one row per window) and ``summary.csv`` (one row per agent and mode)."""
    curves_path, summary_path = out / "curves.csv", out / "summary.csv"
    with open(curves_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "group", "mode", "agent", "step", "normalised_return", "ci95", "n_tasks"])
        for r in results:
            mean, half, n = mean_ci(r.curves, axis=0)
            for k in range(r.curves.shape[1]):
                w.writerow([r.suite, r.group, r.mode, r.agent, (k + 1) * r.window, f"{mean[k]:.6g}", f"{half[k]:.6g}", n[k]])
    with open(summary_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "group", "mode", "agent", "score", "ci95", "first_window", "last_window", "n_tasks"])
        for r in results:
            mean, half, n = mean_ci(r.scores)
            first, last = (mean_ci(r.curves[:, k])[0] for k in (0, -1))
            w.writerow([r.suite, r.group, r.mode, r.agent, f"{mean:.6g}", f"{half:.6g}", f"{first:.6g}", f"{last:.6g}", n])
    return curves_path, summary_path


def plot(results: Sequence[Result], out: Path) -> list[Path]:
    """One PNG per suite and mode: a panel per group, a curve with a 95 % band per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for suite, mode in dict.fromkeys((r.suite, r.mode) for r in results):
        subset = [r for r in results if r.suite == suite and r.mode == mode]
        groups = list(dict.fromkeys(r.group for r in subset))
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
        for ax, group in zip(axes[0], groups):
            for r in (r for r in subset if r.group == group):
                mean, half, _ = mean_ci(r.curves, axis=0)
                x = np.arange(1, r.curves.shape[1] + 1) * r.window
                style = {"lw": 2.5, "color": "k"} if r.agent == "model" else {"lw": 1.2}
                (line,) = ax.plot(x, mean, marker="o", ms=3, label=r.agent, **style)
                ax.fill_between(x, mean - np.nan_to_num(half), mean + np.nan_to_num(half), alpha=0.15,
                                color=line.get_color())
            ax.set_title(f"{group} ({mode})")
            ax.set_xlabel("interaction steps")
            ax.set_ylabel("normalised return (random 0, oracle 1)")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{suite}_{mode}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def summary_table(results: Sequence[Result]) -> str:
    """The terminal table: score (area under the curve) with its CI, first and last window."""
    lines = [f"{'suite':11s} {'group':16s} {'mode':9s} {'agent':12s} {'score':>8s} {'ci95':>7s} {'first':>7s} {'last':>7s} {'tasks':>5s}"]
    for r in results:
        mean, half, n = mean_ci(r.scores)
        first, last = (mean_ci(r.curves[:, k])[0] for k in (0, -1))
        lines.append(f"{r.suite:11s} {r.group:16s} {r.mode:9s} {r.agent:12s} {mean:8.3f} {half:7.3f} {first:7.3f} {last:7.3f} {n:5d}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point
def run(checkpoint: Optional[str], suites: Sequence[str], *, modes: Sequence[str] = MODES,
        agents: Optional[Sequence[str]] = None, out: str | Path = "eval", n_tasks: Optional[int] = None,
        steps: Optional[int] = None, window: Optional[int] = None, context_steps: Optional[int] = None,
        seed: int = 0, temperature: Optional[float] = None, gather_steps: Optional[int] = None,
        untried_first: Optional[bool] = None, step: Optional[int] = None, log=print) -> list[Result]:
    """Evaluates ``agents`` on ``suites`` (names of ``suites.SUITES``) and writes the reports.

    ``agents`` None means the model (when a ``checkpoint`` is given) and each suite's own
    ``Suite.baselines``. ``checkpoint`` may be None when ``agents`` holds no ``model`` (baselines
    only, vocabulary of each suite's own size). ``temperature``, ``gather_steps``, ``untried_first`` None:
    the model's config's ``eval`` values (``rollout.Sampling``). Raises
    ``EvalError`` with a one-line message on bad input.
    """
    for name, given, known in (("mode", modes, MODES), ("agent", agents or (), AGENTS)):
        for x in given:
            if x not in known:
                raise EvalError(f"unknown {name} {x!r} (known: {', '.join(known)})")
    try:
        suite_defs = [get_suite(s) for s in suites]
    except ValueError as e:
        raise EvalError(str(e)) from None
    out = Path(out)
    problem = writable_dir(out)  # before any work: a bad --out must not cost an evaluation
    if problem is not None:
        raise EvalError(f"--out {out}: {problem}")
    model_first = ("model",) if checkpoint is not None else ()
    agents_of = {suite.name: tuple(agents) if agents is not None else model_first + suite.baselines for suite in suite_defs}
    for suite in suite_defs:
        known = ("model",) + tuple(live.LIVE_BASELINES if suite.live else TABLE_BASELINES)
        for agent in agents_of[suite.name]:
            if agent not in known:
                raise EvalError(f"agent {agent!r} does not play suite {suite.name} (it plays {', '.join(known)})")
        if suite.live and not set(modes) & set(LIVE_MODES):
            raise EvalError(f"suite {suite.name} is live and plays {', '.join(LIVE_MODES)} only, not --modes {','.join(modes)}")
    model = None
    if any("model" in a for a in agents_of.values()):
        if checkpoint is None:
            raise EvalError("--checkpoint is required to evaluate the model")
        model = load_model(checkpoint, step, warn=log)
        log(f"model: {checkpoint} step {model.step} ({model.n_states} observation ids, {model.n_actions} actions)")
    defaults = model.config.eval if model is not None else EvalConfig()
    sampling = Sampling.of(defaults, temperature, gather_steps, untried_first)
    results = []
    for suite in suite_defs:
        groups = []
        for group in suite.groups():
            need_obs, need_actions = suite.group_size(group)
            if model is not None and (need_obs > model.n_states or need_actions > model.n_actions):
                log(f"skipping {group}: needs {need_obs} observation ids and {need_actions} actions, "
                    f"the model has {model.n_states} and {model.n_actions}")
                continue
            groups.append(group)
        if not groups:
            raise EvalError(f"no task of suite {suite.name} fits the model's vocabulary "
                            f"({model.n_states} observation ids, {model.n_actions} actions)")
        win = window or suite.window
        n_steps = steps or suite.steps
        if n_steps < win:
            raise EvalError(f"--steps {n_steps} is shorter than one window of {win} steps")
        log(f"suite {suite.name}: {', '.join(groups)}; {n_steps} steps, windows of {win}")
        suite_modes = [m for m in modes if m in LIVE_MODES] if suite.live else list(modes)
        if len(suite_modes) < len(modes):
            log(f"skipping mode(s) {', '.join(m for m in modes if m not in suite_modes)} of {suite.name}: "
                f"a live suite plays {', '.join(LIVE_MODES)} only")
        for group in groups:
            n_obs = model.n_states if model else suite.group_size(group)[0]
            n_act = model.n_actions if model else suite.group_size(group)[1]
            if suite.live:
                results += evaluate_live_group(model, suite, group, agents_of[suite.name], n_obs=n_obs,
                                               n_tasks=n_tasks, steps=n_steps, window=win, seed=seed,
                                               sampling=sampling, log=log)
                continue
            results += evaluate_group(model, suite, group, modes, agents_of[suite.name], n_obs=n_obs, n_actions=n_act,
                                      n_tasks=n_tasks, steps=n_steps, window=win,
                                      context_steps=context_steps or suite.context_steps, seed=seed,
                                      sampling=sampling, log=log)
    paths = [*write_csv(results, out), *plot(results, out)]
    log(summary_table(results))
    log("wrote " + ", ".join(str(p) for p in paths))
    return results
