"""The in-context RL ladder: train a rung on this machine, evaluate it online on held-out tasks.

Rungs (``RUNGS``; a config each under ``configs/ladder/``): ``bandit`` (5-armed bandits, suite
``bandit-5``), ``cbandit-8`` (contextual bandits, 8 contexts of 5 arms: per-context averaging
without planning), ``anymdp-8`` and ``anymdp-16`` (AnyMDP, suites of the same names). A run

1. trains the rung's config (``omnirl_jax.train.train``, data generated on the fly; resumes if the
   workdir holds a checkpoint, so a finished run goes straight to evaluation);
2. plays the model at each checkpoint step of ``--fractions`` of the training budget (the
   compute-scaling table; checkpoints are kept at each fraction), and the suite's baselines beside
   it at the full budget (one report, ``<workdir>/eval/step_<steps>``), online
   on ``--tasks`` held-out tasks (seeds from ``suites.EVAL_SEED``), every agent on the same tasks
   with the same number of interaction steps (the training sequence length);
3. prints every agent's mean normalised return over the budget (the area under its learning
   curve), the model's first and last window, and the paired per-task difference of the model
   and each classic baseline with its 95 % interval; then the scaling table with a least-squares
   line of score against log2(training steps) and the step count where it would reach the
   rung's reference baseline (``Suite.baseline``: epsilon-greedy for bandits, per context for
   contextual bandits, tabular Q-learning
   for MDPs).

Its last line, for the full budget::

    rung=<name> model=<float> baseline=<float> ci_low=<float> first=<float> last=<float> steps=<int> tasks=<int>

``ci_low`` is the lower end of the 95 % interval of the paired model-minus-baseline difference.
Training wall time is measured per run and kept in ``<workdir>/ladder.json``.

    python benchmarks/icrl_ladder.py --rung bandit            # trains <= 30 min on 2 CPU cores
    python benchmarks/icrl_ladder.py --rung anymdp-8 --quick  # a few minutes: pipeline smoke run
    python benchmarks/icrl_ladder.py --scaling                # crossings so far, 16-state extrapolation

Extrapolation (``extrapolate``): each rung's crossing in training tokens, fitted as a power law of
the task's state-action pairs (5 for bandits, 40 at 8 states or contexts) and read at 80 pairs (16 states).
Two points fit any line: the figure sizes a GPU run, it does not predict one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from omnirl_jax.config import Config, load_config
from omnirl_jax.data.loader import make_loader
from omnirl_jax.eval import evaluate
from omnirl_jax.eval.suites import get_suite
from omnirl_jax.train import train

ROOT = Path(__file__).resolve().parents[1]
CLASSIC = ("q_learning", "model_based", "epsilon_greedy", "ucb1", "thompson")
"""Learning baselines the model is compared with (random and oracle only normalise)."""


@dataclasses.dataclass(frozen=True)
class Rung:
    name: str
    suite: str

    @property
    def config(self) -> Path:
        return ROOT / "configs" / "ladder" / f"{self.name}.yaml"

    @property
    def baseline(self) -> str:
        """The classic baseline of the result line: the suite's (``Suite.baseline``)."""
        return get_suite(self.suite).baseline


RUNGS = {r.name: r for r in (Rung("bandit", "bandit-5"), Rung("cbandit-8", "cbandit-8"), Rung("anymdp-8", "anymdp-8"),
                             Rung("anymdp-16", "anymdp-16"))}
QUICK = ["train.steps=8", "train.log_every=4", "checkpoint.every=2", "optim.warmup_steps=2"]
"""Overrides of ``--quick``: a few optimiser steps (checks the pipeline only)."""


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Mean of ``a - b`` over tasks where both are defined, its 95 % half-width, and the count."""
    d = (a - b)[~np.isnan(a - b)]
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
    return float(d.mean()), float(half), int(d.size)


def budget_steps(total: int, fractions: Sequence[float], every: int) -> list[int]:
    """The checkpoint steps (every ``every`` steps, and the last) nearest each fraction of ``total``."""
    saved = np.array(sorted(set(range(every, total + 1, every)) | {total}))
    return sorted({int(saved[np.argmin(np.abs(saved - f * total))]) for f in fractions})


def crossing(steps: Sequence[int], scores: Sequence[float], target: float, noise: float = 0.0) -> Optional[float]:
    """Training steps where the least-squares line of score on log2(steps) reaches ``target``;
    None with fewer than two budgets or when the line rises by no more than ``noise`` over the
    budgets measured (the rung passes its scores' 95 % half-width: a flat line's slope is noise,
    and read out it crossed at 10^200 steps)."""
    if len(steps) < 2:
        return None
    slope, intercept = np.polyfit(np.log2(steps), scores, 1)
    rise = slope * (np.log2(max(steps)) - np.log2(min(steps)))
    return None if rise <= max(noise, 0.0) else float(2 ** ((target - intercept) / slope))


def train_rung(cfg: Config, workdir: Path, progress: bool) -> float:
    """Trains (or resumes) and returns the training wall time of all runs in ``workdir`` so far."""
    record = workdir / "ladder.json"
    seconds = json.loads(record.read_text())["train_seconds"] if record.is_file() else 0.0
    start = time.perf_counter()
    with make_loader(cfg.data, batch_size=cfg.train.batch_size, segment_len=cfg.train.segment_len,
                     seed=cfg.train.seed) as loader:
        history = train(cfg, workdir, loader, progress=progress)
    if history:  # a finished run resumed does no step: its time is not counted again
        seconds += time.perf_counter() - start
        record.write_text(json.dumps({"train_seconds": seconds}))
    return seconds


def run_rung(rung: str, workdir, *, overrides: Sequence[str] = (), steps: Optional[int] = None,
             n_tasks: Optional[int] = None, fractions: Sequence[float] = (1.0,), progress: bool = False,
             log=print) -> dict:
    """Trains and evaluates one rung; returns the result line's fields for the full budget plus
    ``scaling``, one dict per budget (module doc)."""
    if rung not in RUNGS:
        raise ValueError(f"unknown rung {rung!r} (known: {', '.join(RUNGS)})")
    r = RUNGS[rung]
    extra = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    cfg = load_config(str(r.config), extra)
    budgets = budget_steps(cfg.train.steps, fractions, cfg.checkpoint.every)
    if len(budgets) > cfg.checkpoint.keep:
        raise ValueError(f"{len(budgets)} budgets need checkpoint.keep >= {len(budgets)}, the config has {cfg.checkpoint.keep}")
    workdir = Path(workdir)
    n_tasks = n_tasks or 64
    train_seconds = train_rung(cfg, workdir, progress)
    log(f"rung {rung}: trained {cfg.train.steps} steps, {train_seconds / 60:.1f} min of training")

    suite = get_suite(r.suite)
    common = dict(modes=["online"], n_tasks=n_tasks, steps=cfg.data.generator.seq_len, window=min(suite.window, cfg.data.generator.seq_len),
                  seed=1, log=lambda *_: None)
    # The full budget is played with the suite's random, oracle and classic baselines in one report
    # (its PNG shows them together); PPO, which trains a network per task, is left to omnirl-eval.
    agents = ["model", *(a for a in suite.baselines if a in ("random", "oracle") + CLASSIC)]
    results = {x.agent: x for x in evaluate.run(str(workdir), [r.suite], step=budgets[-1], agents=agents,
                                                   out=workdir / "eval" / f"step_{budgets[-1]}", **common)}
    baselines = {name: res for name, res in results.items() if name != "model"}
    classic = [a for a in CLASSIC if a in baselines]
    for name, res in baselines.items():
        log(f"  {name:15s} {np.nanmean(res.scores):.3f}  first {np.nanmean(res.curves[:, 0]):.3f}  "
            f"last {np.nanmean(res.curves[:, -1]):.3f}")
    scaling = []
    for step in budgets:
        (model,) = [results["model"]] if step == budgets[-1] else evaluate.run(
            str(workdir), [r.suite], agents=["model"], step=step, out=workdir / "eval" / f"step_{step}", **common)
        row = {"steps": step, "tokens": step * cfg.train.batch_size * cfg.train.segment_len * cfg.model.tokens_per_step,
               "minutes": train_seconds / 60 * step / cfg.train.steps, "model": float(np.nanmean(model.scores)),
               "first": float(np.nanmean(model.curves[:, 0])), "last": float(np.nanmean(model.curves[:, -1]))}
        for name in classic:
            diff, half, _ = paired(model.scores, baselines[name].scores)
            row[f"minus_{name}"], row[f"ci_{name}"] = diff, half
        scaling.append(row)
    full = scaling[-1]
    log(f"model at {full['steps']} steps: {full['model']:.3f}, first window {full['first']:.3f}, last {full['last']:.3f}")
    for name in classic:
        log(f"  model - {name:15s} {full[f'minus_{name}']:+.3f} ± {full[f'ci_{name}']:.3f} (95 % CI, paired, {n_tasks} tasks)")
    target = float(np.nanmean(baselines[r.baseline].scores))
    log(f"scaling (online, {n_tasks} tasks; the model's score against {r.baseline}'s {target:.3f}):")
    log(f"  {'steps':>6s} {'tokens':>10s} {'minutes':>7s} {'model':>6s} {'first':>6s} {'last':>6s} {'minus':>7s} {'ci95':>6s}")
    for row in scaling:
        log(f"  {row['steps']:6d} {row['tokens']:10d} {row['minutes']:7.1f} {row['model']:6.3f} {row['first']:6.3f} "
            f"{row['last']:6.3f} {row[f'minus_{r.baseline}']:+7.3f} {row[f'ci_{r.baseline}']:6.3f}")
    cross = crossing([row["steps"] for row in scaling], [row["model"] for row in scaling], target,
                     noise=float(np.mean([row[f"ci_{r.baseline}"] for row in scaling])))
    log("  line of score on log2(steps): " + ("no rise beyond the intervals, no crossing" if cross is None else
        f"reaches {r.baseline} at ~{cross:.0f} steps ({cross / cfg.train.steps:.1f}x this budget)"))
    result = {"rung": rung, "model": full["model"], "baseline": target,
              "ci_low": full[f"minus_{r.baseline}"] - full[f"ci_{r.baseline}"], "first": full["first"],
              "last": full["last"], "steps": cfg.data.generator.seq_len, "tasks": n_tasks, "train_steps": cfg.train.steps,
              "train_minutes": train_seconds / 60, "crossing_steps": cross, "scaling": scaling,
              "pairs": cfg.data.generator.n_states * cfg.data.generator.n_actions,
              "crossing_tokens": None if cross is None else cross * scaling[-1]["tokens"] / full["steps"],
              "baselines": {name: float(np.nanmean(res.scores)) for name, res in baselines.items()}}
    (workdir / "ladder_result.json").write_text(json.dumps(result, indent=1))
    return result


def result_line(result: dict) -> str:
    """The ladder's last line (module doc)."""
    return (f"rung={result['rung']} model={result['model']:.4f} baseline={result['baseline']:.4f} "
            f"ci_low={result['ci_low']:.4f} first={result['first']:.4f} last={result['last']:.4f} "
            f"steps={result['steps']} tasks={result['tasks']}")


def extrapolate(results: Sequence[dict], pairs: int) -> Optional[float]:
    """Training tokens at which a rung with ``pairs`` state-action pairs would reach its baseline:
    the least-squares line of log(crossing tokens) on log(pairs) through the rungs' own crossings
    (None unless at least two rungs of different sizes have one)."""
    known = [(r["pairs"], r["crossing_tokens"]) for r in results if r.get("crossing_tokens")]
    if len({p for p, _ in known}) < 2:
        return None
    slope, intercept = np.polyfit(np.log([p for p, _ in known]), np.log([t for _, t in known]), 1)
    return float(np.exp(intercept + slope * np.log(pairs)))


def scaling_report(root: Path, target: str = "anymdp-16", log=print) -> Optional[float]:
    """Prints each finished rung's crossing (``<root>/<rung>/ladder_result.json``) and the
    extrapolated crossing of ``target``; returns the latter in tokens."""
    results = [json.loads(f.read_text()) for name in RUNGS if (f := root / name / "ladder_result.json").is_file()]
    log(f"{'rung':10s} {'pairs':>5s} {'model':>6s} {'baseline':>8s} {'train tokens':>12s} {'crossing tokens':>15s}")
    for r in results:
        cross = "none" if r.get("crossing_tokens") is None else f"{r['crossing_tokens']:.3g}"
        log(f"{r['rung']:10s} {r['pairs']:5d} {r['model']:6.3f} {r['baseline']:8.3f} "
            f"{r['scaling'][-1]['tokens']:12.3g} {cross:>15s}")
    cfg = load_config(str(RUNGS[target].config))
    predicted = extrapolate(results, cfg.data.generator.n_states * cfg.data.generator.n_actions)
    log(f"{target}: " + ("no extrapolation (needs crossings at two rung sizes)" if predicted is None else
        f"crosses its baseline at ~{predicted:.3g} training tokens (log-log line of crossing tokens on pairs)"))
    return predicted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rung", choices=list(RUNGS))
    parser.add_argument("--scaling", action="store_true",
                        help="only print the finished rungs' crossings under runs/ladder and the 16-state extrapolation")
    parser.add_argument("--workdir", help="default runs/ladder/<rung> (runs/ladder/<rung>_quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="a few optimiser steps: checks the pipeline only")
    parser.add_argument("--tasks", type=int, help="held-out tasks (default 64, 8 with --quick)")
    parser.add_argument("--fractions", default="0.25,0.5,1", help="training budgets evaluated, as fractions of train.steps")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.steps=800")
    args = parser.parse_args(argv)
    if args.scaling:
        scaling_report(ROOT / "runs" / "ladder")
        return 0
    if args.rung is None:
        parser.error("--rung is required (or --scaling)")
    workdir = Path(args.workdir or ROOT / "runs" / "ladder" / (args.rung + ("_quick" if args.quick else "")))
    fractions = [float(x) for x in args.fractions.split(",") if x]
    result = run_rung(args.rung, workdir, overrides=(QUICK if args.quick else []) + args.set,
                      n_tasks=args.tasks or (8 if args.quick else None), fractions=fractions,
                      progress=sys.stderr.isatty())
    print(result_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
