"""Online in-context evaluation during training (config section ``eval``).

Every ``eval.every`` optimiser steps and at the last one, the model plays ``eval.tasks`` held-out
tasks of ``eval.suite`` from an empty context, exactly as ``omnirl-eval --modes online`` does
(same tasks, scoring, sampling as ``eval.temperature`` and ``eval.gather_steps`` say), beside
the suite's classic baseline (``Suite.baseline``, played once, on the same tasks). Its figures go to ``metrics.csv`` and
TensorBoard under ``eval/``; the curves, CSV and PNG of each evaluation to
``<workdir>/eval/step_<N>/``.

Why during training: the loss does not say whether the model learns in context; the return
rising within the context does, and researchers watch the task metric beside the loss.
It does not perturb training: it reads a host copy of the parameters (so the next step may donate
the train state) and draws its randomness from ``eval.seed``, never from the train state or the
loader (tested). Cost on 2 CPU cores, the bandit rung's model on 64 tasks x 256 pulls: 5.9 s per
evaluation after a first one of 21 s that compiles and plays the baseline; 7 % of the Quickstart's
6.4 minutes (``docs/experiments.md``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from omnirl_jax.config import Config
from omnirl_jax.eval.evaluate import evaluate_group, mean_ci, plot, write_csv
from omnirl_jax.eval.restore import LoadedModel, make_runner
from omnirl_jax.eval.rollout import Sampling
from omnirl_jax.eval.suites import get_suite
from omnirl_jax.typed_config import ConfigError

MODE = "online"
FIGURES = ("score", "ci95", "first", "last")
"""The model's figures of each evaluation, logged as ``eval/<figure>`` beside ``eval/<baseline>``."""


@dataclasses.dataclass
class Evaluation:
    """One evaluation's figures (normalised returns, mean over tasks)."""

    step: int
    score: float
    """Mean normalised return over the whole budget (area under the in-context curve)."""
    ci95: float
    first: float
    """Mean of the first window of steps."""
    last: float
    baseline_name: str
    baseline: float
    """The suite's classic baseline's score on the same tasks."""
    png: Path

    @property
    def metrics(self) -> dict[str, float]:
        """The figures logged (``metrics.csv`` columns, TensorBoard tags)."""
        return {**{f"eval/{name}": getattr(self, name) for name in FIGURES}, f"eval/{self.baseline_name}": self.baseline}


class InTrainingEval:
    """Built at the start of a run (a suite that does not exist or does not fit the model's
    vocabulary raises ``ConfigError`` before any work), called with the parameters."""

    def __init__(self, cfg: Config, out_dir: Path):
        e = cfg.eval
        try:
            self.suite = get_suite(e.suite)
        except ValueError as err:
            raise ConfigError(f"config key 'eval.suite': {err}") from None
        groups = self.suite.groups()
        if len(groups) != 1:
            raise ConfigError(f"config key 'eval.suite': {e.suite} has {len(groups)} task groups; evaluation during "
                              "training plays one (run omnirl-eval on a checkpoint for this suite)")
        (self.group,) = groups
        n_obs, n_actions = self.suite.group_size(self.group)
        if n_obs > cfg.data.generator.n_states or n_actions > cfg.data.generator.n_actions:
            raise ConfigError(f"config key 'eval.suite': {e.suite} needs {n_obs} observation ids and {n_actions} "
                              f"actions, the model has {cfg.data.generator.n_states} and {cfg.data.generator.n_actions}")
        if e.tasks > self.suite.n_tasks:
            raise ConfigError(f"config key 'eval.tasks': {e.tasks} is more than suite {e.suite}'s {self.suite.n_tasks}")
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.runner = make_runner(cfg, None)  # one runner: its jitted rollout compiles once
        self.baseline = None
        self.latest: Optional[Evaluation] = None

    def columns(self) -> tuple[str, ...]:
        """The names of ``Evaluation.metrics``."""
        return tuple(f"eval/{name}" for name in (*FIGURES, self.suite.baseline))

    def _play(self, model, agent: str):
        c = self.cfg
        (result,) = evaluate_group(model, self.suite, self.group, [MODE], [agent], n_obs=c.data.generator.n_states,
                                   n_actions=c.data.generator.n_actions, n_tasks=c.eval.tasks, steps=self.suite.steps,
                                   window=self.suite.window, context_steps=self.suite.context_steps, seed=c.eval.seed,
                                   sampling=Sampling.of(c.eval), log=lambda *_: None)
        return result

    def __call__(self, params, step: int) -> Evaluation:
        """Plays the model with ``params`` (the train state's, any sharding). Every process must
        call it (the parameters are gathered to each host); all get the same figures."""
        self.runner.params = multihost_utils.process_allgather(params, tiled=True)
        model = LoadedModel(self.runner, self.cfg.data.generator.n_states, self.cfg.data.generator.n_actions, step, self.cfg)
        result = self._play(model, "model")
        if self.baseline is None:
            self.baseline = self._play(None, self.suite.baseline)
        out = self.out_dir / f"step_{step}"
        png = out / f"{self.suite.name}_{MODE}.png"
        if jax.process_index() == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_csv([result, self.baseline], out)
            plot([result, self.baseline], out)
        mean, half, _ = mean_ci(result.scores)
        first, last = (float(np.nanmean(result.curves[:, k])) for k in (0, -1))
        self.latest = Evaluation(step, float(mean), float(half), first, last, self.suite.baseline,
                                 float(np.nanmean(self.baseline.scores)), png)
        return self.latest

    def describe(self, ev: Evaluation) -> str:
        """The line printed after each evaluation."""
        w = self.suite.window
        return (f"eval at step {ev.step}: online return on {self.cfg.eval.tasks} unseen {self.suite.name} tasks: "
                f"{ev.first:.2f} in the first {w} steps -> {ev.last:.2f} in the last {w} (mean {ev.score:.3f} ± {ev.ci95:.3f}; "
                f"{ev.baseline_name} {ev.baseline:.3f}; random 0, oracle 1); curves: {ev.png}")
