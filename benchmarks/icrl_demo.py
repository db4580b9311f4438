"""Demonstration that a meta-trained OmniRL learns in context, end to end on a CPU.

1. data: 16-state AnyMDP sequences generated on the fly by the loader (``data.source: generate``,
   default behaviour mixture, data seed ``train.seed``);
2. training: ``omnirl_jax.train.train`` with ``configs/demo.yaml`` (resumes if the workdir
   already holds a checkpoint; a finished run goes straight to evaluation);
3. evaluation: ``omnirl_jax.eval.evaluate.run`` on held-out 16-state AnyMDP tasks (suite
   ``anymdp-16``, seeds ``suites.EVAL_SEED``) in online mode, the model against random, oracle,
   tabular Q-learning and model-based RL over the same interaction steps; CSV and PNG curves
   land in ``<workdir>/eval``.

It prints the model's and Q-learning's mean normalised return over the whole budget (the area
under the learning curve, ``evaluate`` module doc), the paired per-task difference with a 95 %
confidence interval, and the model's first and last window (does return rise with context?).
The last line reads ``model=<float> q_learning=<float> steps=<int> tasks=<int>``.

    python benchmarks/icrl_demo.py             # 46 minutes on 2 CPU cores (measured)
    python benchmarks/icrl_demo.py --quick     # a few minutes: smoke run, numbers meaningless
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from omnirl_jax.eval import evaluate
from omnirl_jax.config import load_config
from omnirl_jax.data.loader import make_loader
from omnirl_jax.train import train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["train.steps=20", "train.log_every=5", "checkpoint.every=20", "data.seq_len=512", "train.segment_len=256",
         "optim.warmup_steps=5"]
"""Overrides of ``--quick``: a few optimiser steps on short sequences (checks the pipeline only)."""


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Mean of ``a - b`` over tasks where both are defined, its 95 % half-width, and the count."""
    d = (a - b)[~np.isnan(a - b)]
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
    return float(d.mean()), float(half), int(d.size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--workdir", help="default runs/icrl_demo (runs/icrl_demo_quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run of the whole pipeline")
    parser.add_argument("--tasks", type=int, help="held-out tasks (default 64, 8 with --quick)")
    parser.add_argument("--steps", type=int, help="interaction steps per task (default: data.seq_len)")
    parser.add_argument("--window", type=int, default=256, help="steps per curve point")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, QUICK if args.quick else [])
    workdir = Path(args.workdir or ROOT / "runs" / ("icrl_demo_quick" if args.quick else "icrl_demo"))
    n_tasks = args.tasks or (8 if args.quick else 64)
    steps = args.steps or cfg.data.seq_len
    window = min(args.window, steps)

    start = time.perf_counter()
    with make_loader(cfg.data, batch_size=cfg.train.batch_size, segment_len=cfg.train.segment_len,
                     seed=cfg.train.seed) as loader:
        history = train(cfg, workdir, loader, progress=sys.stderr.isatty())
    trained = time.perf_counter() - start
    if history:
        last = history[-1]
        print(f"trained {cfg.train.steps} steps in {trained / 60:.1f} min: loss {last['loss']:.4f}, "
              f"policy accuracy {last['policy_accuracy']:.3f}, {last['tokens_per_s']:.0f} tokens/s")

    results = evaluate.run(str(workdir), ["anymdp-16"], modes=["online"], out=workdir / "eval", n_tasks=n_tasks,
                           steps=steps, window=window, seed=1)
    by_agent = {r.agent: r for r in results}
    model, q_learning = by_agent["model"], by_agent["q_learning"]
    diff, half, n = paired(model.scores, q_learning.scores)
    first, last = (np.nanmean(model.curves[:, k]) for k in (0, -1))
    rise, rise_half, _ = paired(model.curves[:, -1], model.curves[:, 0])
    print(f"model - q_learning: {diff:+.3f} ± {half:.3f} (95 % CI, paired over {n} tasks)")
    print(f"model by window: first {first:.3f}, last {last:.3f} (rise {rise:+.3f} ± {rise_half:.3f})")
    print(f"total time {(time.perf_counter() - start) / 60:.1f} min")
    print(f"model={np.nanmean(model.scores):.4f} q_learning={np.nanmean(q_learning.scores):.4f} "
          f"steps={steps} tasks={n_tasks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
