"""``omnirl-eval``: the command line of ``omnirl_jax.eval.evaluate`` (its doc says what it does).

The evaluator, and JAX with it, is imported only after the arguments parse, so ``--help`` and a
bad argument answer at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from omnirl_jax.cli import HelpFormatter
from omnirl_jax.eval.suites import MODES, SUITES

DESCRIPTION = ("in-context RL of a trained OmniRL checkpoint on held-out task suites, against each suite's "
               "baselines, in three modes: online (from an empty context), offline (after a noisy policy's "
               "context), imitation (after an oracle's); writes curves.csv, summary.csv and a PNG per suite and mode")


def _csv_list(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omnirl-eval", description=DESCRIPTION, formatter_class=HelpFormatter,
        epilog="example: omnirl-eval --checkpoint runs/cpu --suite anymdp-16 --modes online --out runs/cpu/eval")
    parser.add_argument("--checkpoint", help="workdir of an omnirl-train run (holds config.yaml and checkpoints/), "
                        "or a directory of exported parameters (omnirl_jax.export)")
    parser.add_argument("--suite", required=True, type=_csv_list, help="comma-separated suites, of " + ", ".join(SUITES))
    parser.add_argument("--modes", type=_csv_list, default=",".join(MODES), help="comma-separated, of " + ",".join(MODES))
    baselines = dict.fromkeys(b for suite in SUITES.values() for b in suite.baselines)
    parser.add_argument("--agents", type=_csv_list, help=f"comma-separated, of model,{','.join(baselines)} "
                        "(default: the model and the suite's own baselines)")
    parser.add_argument("--out", default="eval", help="directory for CSV and PNG files")
    parser.add_argument("--tasks", type=int, help="tasks per group (default: the suite's)")
    parser.add_argument("--steps", type=int, help="interaction steps per task and mode (default: the suite's)")
    parser.add_argument("--window", type=int, help="steps per curve point (default: the suite's)")
    parser.add_argument("--context-steps", type=int, help="context records in offline/imitation modes")
    parser.add_argument("--temperature", type=float,
                        help="policy sampling temperature (0: greedy; default: the run's eval.temperature)")
    parser.add_argument("--gather-steps", type=int,
                        help="first interaction steps of a context sampled at temperature 1 "
                             "(default: the run's eval.gather_steps)")
    parser.add_argument("--untried-first", action=argparse.BooleanOptionalAction,
                        help="gathering steps take an observation's untried actions first "
                             "(default: the run's eval.untried_first)")
    parser.add_argument("--seed", type=int, default=0, help="seed of env, policy and baseline randomness")
    parser.add_argument("--step", type=int, help="checkpoint step to restore (default: the latest)")
    args = parser.parse_args(argv)
    if args.gather_steps is not None and args.gather_steps < 0:
        parser.error("--gather-steps must be >= 0")
    for name in ("tasks", "steps", "window", "context_steps"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from omnirl_jax.eval.evaluate import EvalError, run

    try:
        run(args.checkpoint, args.suite, modes=args.modes, agents=args.agents, out=args.out, n_tasks=args.tasks,
            steps=args.steps, window=args.window, context_steps=args.context_steps, seed=args.seed,
            temperature=args.temperature, gather_steps=args.gather_steps, untried_first=args.untried_first,
            step=args.step)
    except EvalError as e:
        print(f"omnirl-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
