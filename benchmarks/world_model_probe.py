"""Does the model learn the in-context world model that a count table gets? A few-minute probe.

In-context RL needs the model to know, from its context, what each action does in each state. The
next-state head is the cleanest test of that: a dense target at every step, with a known good
answer computable from the visible history. This trains a fresh model of the config with the
next-state term only (no policy, reward or behaviour terms, no context warm-up) on sequences of one
segment, and prints its next-observation cross-entropy over the last ``--tail`` steps beside that
of two count estimators on the very same batches and steps (those whose behaviour action is real,
as in ``omnirl_jax.losses``), each using only the steps before:

* *state counts*: ``P(s' | s)`` from the counts of what followed ``s`` (Dirichlet ``alpha`` per
  next observation), ignoring the action;
* *pair counts*: ``P(s' | s, a)`` from the counts of what followed ``(s, a)``, backed off to the
  state estimate (its prior mass ``alpha * S``): what a tabular model-based learner knows;
* *state recall*: half the mass on the observation that followed ``s`` the last time, the rest
  spread evenly (uniform where ``s`` is new): recall of one earlier visit, no averaging.

A model near the recall line has learned to look up the last visit, not to average over visits;
one at or above the state estimate shows no use of the action; one near the pair estimate has
the world model an in-context policy can build on (it may beat both: it can learn the task
prior, which counting ignores). ``ln S`` is knowing nothing.

    python benchmarks/world_model_probe.py                          # configs/ladder/anymdp-16.yaml, 300 steps
    python benchmarks/world_model_probe.py --set model.mixer=delta
    python benchmarks/world_model_probe.py --set "data.generator.policy_weights={random_drift: 1.0}"
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from omnirl_jax.config import load_config
from omnirl_jax.data.loader import make_loader
from omnirl_jax.train import fresh_steps

ROOT = Path(__file__).resolve().parents[1]
PROBE_OVERRIDES = ["loss.policy=0", "loss.reward=0", "loss.behaviour=0", "loss.next_state=1", "loss.warmup_steps=0",
                   "data.workers=0"]
"""Next-state term only, every step weighted alike, data generated in this process."""


def reference_nll(batch: dict, n_states: int, n_actions: int, alpha: float) -> tuple[float, float, float]:
    """Mean negative log-likelihood of ``next_obs`` under the state counts, pair counts and state
    recall estimators (module doc), over the steps whose behaviour action is real; each step uses
    the earlier ones."""
    obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
    rows = np.arange(obs.shape[0])
    state_counts = np.zeros((obs.shape[0], n_states, n_states))
    pair_counts = np.zeros((obs.shape[0], n_states, n_actions, n_states))
    last_next = np.full((obs.shape[0], n_states), -1)
    nll, n = np.zeros(3), 0
    for t in range(obs.shape[1]):
        real = action[:, t] < n_actions
        r, s, a, s2 = rows[real], obs[real, t], action[real, t], next_obs[real, t]
        seen_s, seen_sa = state_counts[r, s], pair_counts[r, s, a]
        p_state = (seen_s + alpha) / (seen_s.sum(axis=1, keepdims=True) + alpha * n_states)
        p_pair = (seen_sa + alpha * n_states * p_state) / (seen_sa.sum(axis=1, keepdims=True) + alpha * n_states)
        last = last_next[r, s]
        p_recall = np.where(last < 0, 1.0, 0.5) / n_states + np.where(last == s2, 0.5, 0.0)
        nll -= np.log([p_state[np.arange(r.size), s2], p_pair[np.arange(r.size), s2], p_recall]).sum(axis=1)
        n += r.size
        state_counts[r, s, s2] += 1
        pair_counts[r, s, a, s2] += 1
        last_next[r, s] = s2
    return tuple(float(x) for x in nll / max(n, 1))


def probe(cfg, tail: int, alpha: float) -> tuple[float, float, float, float]:
    """Trains a fresh model for ``cfg.train.steps`` steps; the last ``tail`` steps' mean next-state
    loss of the model and of the three reference estimators (state counts, pair counts, recall)."""
    n_states, n_actions, steps = cfg.data.generator.n_states, cfg.data.generator.n_actions, cfg.train.steps
    history = []
    with make_loader(cfg.data, batch_size=cfg.train.batch_size, segment_len=cfg.train.segment_len,
                     seed=cfg.train.seed) as loader:
        for k, (batch, metrics) in enumerate(fresh_steps(cfg, (next(loader) for _ in range(steps)))):
            refs = reference_nll(batch, n_states, n_actions, alpha) if k >= steps - tail else (np.nan,) * 3
            history.append((metrics["next_state_loss"], *refs))
    return tuple(float(x) for x in np.mean(history[-tail:], axis=0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "ladder" / "anymdp-16.yaml"))
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps")
    parser.add_argument("--tail", type=int, default=30, help="final steps averaged in the report")
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet prior of the count estimators")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, PROBE_OVERRIDES + [f"train.steps={args.steps}"] + args.set)
    # One segment per sequence: every batch starts fresh sequences, so the carry is always reset.
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=cfg.train.segment_len))
    tail = min(args.tail, args.steps)
    model, state_counts, pair_counts, recall = probe(cfg, tail, args.alpha)
    print(f"next-state cross-entropy  model {model:.3f}  state counts {state_counts:.3f}  pair counts {pair_counts:.3f}  "
          f"state recall {recall:.3f}  "
          f"(ln {cfg.data.generator.n_states} = {np.log(cfg.data.generator.n_states):.3f}; last {tail} of {args.steps} steps, "
          f"segments of {cfg.train.segment_len})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
