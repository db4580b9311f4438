"""Where a bandit model gains or loses against the classic algorithms: exploration, on validation tasks.

Plays a trained bandit model (``icrl_ladder.py --rung bandit``'s workdir) and epsilon-greedy and
Thompson sampling online on ``bandit-5`` tasks *outside* the ladder's reported ones (by default the
suite's tasks 1000 to 1255), so decisions made here (a sampling temperature, the next change to
try) are not fitted to the reported figures. Per agent it prints:

* the mean normalised return over the 256 pulls, on noiseless tasks (every arm pays a fixed reward,
  about half of AnyMDP bandits) and noisy ones, and in the first and last window of 32 pulls;
* how often the best arm is pulled (pulls 0-7, 8-31, last 64);
* distinct arms tried after 5, 10 and 32 pulls: the classic algorithms pull every arm once first,
  while sampling a best-arm posterior (the model at temperature 1) tries an arm only as often as
  it may be the best;

and for each model temperature (after ``--gather-steps`` pulls at 1, ``rollout.Sampling``) the
paired model-minus-epsilon-greedy difference with its 95 % interval.

    python benchmarks/bandit_exploration.py runs/ladder/bandit --temperatures 1,0.7 --gather-steps 10
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import numpy as np

from anymdp_gym.jax import dynamics as env_jax
from omnirl_jax.data.schema import TAG_ID
from omnirl_jax.eval import evaluate
from omnirl_jax.eval.baselines import normalise, reference_returns, solver_baseline
from omnirl_jax.eval.rollout import Sampling
from omnirl_jax.eval.suites import get_suite
from icrl_ladder import paired

WINDOW = 32


def describe(name: str, traj, means: np.ndarray, noiseless: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Prints one agent's line; returns its per-task scores."""
    action, reward = np.asarray(traj.action), np.asarray(traj.reward)
    curves = normalise(evaluate.window_returns(reward, np.asarray(traj.done), WINDOW), refs[:, 0], refs[:, 1])
    scores = np.nanmean(curves, axis=1)
    best = action == means.argmax(axis=1)[:, None]
    distinct = [np.mean([len(set(row[:k])) for row in action]) for k in (5, 10, 32)]
    print(f"{name:16s} {np.nanmean(scores):.3f}  noiseless {np.nanmean(scores[noiseless]):.3f}  "
          f"noisy {np.nanmean(scores[~noiseless]):.3f}  first {np.nanmean(curves[:, 0]):.3f}  "
          f"last {np.nanmean(curves[:, -1]):.3f} | best arm {best[:, :8].mean():.2f} {best[:, 8:32].mean():.2f} "
          f"{best[:, -64:].mean():.2f} | arms tried {distinct[0]:.2f} {distinct[1]:.2f} {distinct[2]:.2f}")
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="workdir of a bandit training run")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--first-task", type=int, default=1000, help="first task index (the ladder reports 0-63)")
    parser.add_argument("--tasks", type=int, default=256)
    parser.add_argument("--temperatures", default="1", help="comma-separated model sampling temperatures")
    parser.add_argument("--gather-steps", type=int, default=0, help="first pulls sampled at temperature 1")
    parser.add_argument("--untried-first", action="store_true", help="gathering pulls take untried arms first")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    suite = dataclasses.replace(get_suite("bandit-5"), first_task=args.first_task, n_tasks=args.tasks)
    tasks = suite.tasks(suite.name, 1)
    env_params = env_jax.from_tasks(tasks, suite.n_actions)
    means = np.array([(t.transition[0] * t.reward[0]).sum(axis=-1) for t in tasks])
    noiseless = np.array([not t.reward_noise.any() for t in tasks])
    refs = np.array([reference_returns(t) for t in tasks])
    key = jax.random.key(args.seed)
    print(f"bandit-5 tasks {args.first_task}..{args.first_task + args.tasks - 1}, {suite.steps} pulls, "
          f"{noiseless.mean():.0%} noiseless; columns: score, by task kind, first / last window of {WINDOW} | "
          f"best-arm rate in pulls 0-7, 8-31, last 64 | distinct arms after 5, 10, 32 pulls")
    baseline = {}
    for agent in ("epsilon_greedy", "thompson"):
        traj = solver_baseline(agent, tasks, env_params, 1, key, suite.steps, seed=args.seed)
        baseline[agent] = describe(agent, traj, means, noiseless, refs)
    model = evaluate.load_model(args.workdir, args.step)
    for temperature in (float(x) for x in args.temperatures.split(",")):
        carry = model.runner.init_carry(len(tasks))
        traj, _ = model.runner.rollout(carry, env_params, key, n_steps=suite.steps, tag=TAG_ID["unk"],
                                       sampling=Sampling(temperature, args.gather_steps, args.untried_first))
        name = (f"model T={temperature:g}" + (f" g{args.gather_steps}" if args.gather_steps else "")
                + (" untried first" if args.untried_first else ""))
        scores = describe(name, jax.device_get(traj), means, noiseless, refs)
        diff, half, _ = paired(scores, baseline["epsilon_greedy"])
        print(f"  minus epsilon_greedy {diff:+.3f} +- {half:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
