"""Can the policy path learn in-context rules at all? A few-minute probe before a long demo run.

The policy head is trained alone (world-model weights 0, no context warm-up) on the demo's
generated sequences, with the label replaced by a rule computable from the visible history:

* ``previous``: the behaviour action of the previous step (local: one step back);
* ``majority``: the most frequent behaviour action so far in the sequence (a count over the whole
  context, the simplest long-range aggregation an in-context policy needs);
* ``label``: the real opt3 label (what the demo trains on).

For each it prints the policy loss and accuracy, averaged over the last ``--tail`` steps. The two
rules are deterministic, so a policy path that can aggregate context drives them to accuracy ~1.
Why a probe: a 50-minute demo run whose policy stays at ln A says only that it failed; this says
whether the mechanism the policy needs is learnable by the model of the config, in minutes.

    python benchmarks/policy_probe.py                   # configs/demo.yaml, 150 steps per target
    python benchmarks/policy_probe.py --set model.n_heads=4 --targets majority
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from omnirl_jax import sharding
from omnirl_jax.config import load_config
from omnirl_jax.data.loader import make_loader
from omnirl_jax.train import Setup

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("previous", "majority", "label")
PROBE_OVERRIDES = ["loss.next_state=0", "loss.reward=0", "loss.warmup_steps=0", "data.workers=0"]
"""The policy alone, every step weighted alike, data generated in this process."""


def rule_labels(target: str, action: np.ndarray, label: np.ndarray, n_actions: int) -> np.ndarray:
    """``[B, T]`` labels of ``target``; the null action ``n_actions`` (masked) where a rule has
    no answer yet."""
    if target == "label":
        return label
    out = np.full_like(action, n_actions)
    if target == "previous":
        out[:, 1:] = action[:, :-1]
        return out
    counts = np.zeros((action.shape[0], n_actions + 1), np.int64)  # last column: null actions
    rows = np.arange(action.shape[0])
    for t in range(action.shape[1]):
        seen = counts[:, :n_actions].sum(axis=1) > 0
        out[:, t] = np.where(seen, counts[:, :n_actions].argmax(axis=1), n_actions)
        counts[rows, action[:, t]] += 1
    return out


def probe(cfg, target: str, tail: int) -> tuple[float, float]:
    """Trains a fresh model on ``target`` for ``cfg.train.steps`` steps; the last ``tail`` steps'
    mean policy loss and accuracy."""
    setup = Setup.create(cfg, sharding.make_mesh(cfg.mesh))
    state, step = setup.init_state(), setup.jit_train_step()
    history = []
    with make_loader(cfg.data, batch_size=cfg.train.batch_size, segment_len=cfg.train.segment_len,
                     seed=cfg.train.seed) as loader:
        for _ in range(cfg.train.steps):
            batch = next(loader)
            batch = dict(batch, label=rule_labels(target, batch["action"], batch["label"], cfg.data.n_actions))
            state, metrics = step(state, sharding.put_batch(batch, setup.mesh))
            history.append((float(metrics["policy_loss"]), float(metrics["policy_accuracy"])))
    loss, accuracy = np.mean(history[-tail:], axis=0)
    return float(loss), float(accuracy)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per target")
    parser.add_argument("--tail", type=int, default=30, help="final steps averaged in the report")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, PROBE_OVERRIDES + [f"train.steps={args.steps}"] + args.set)
    # One segment per sequence: every batch starts fresh sequences, so the carry is always reset.
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=cfg.train.segment_len))
    for target in args.targets.split(","):
        if target not in TARGETS:
            parser.error(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
        loss, accuracy = probe(cfg, target, min(args.tail, args.steps))
        print(f"{target:9s} policy loss {loss:.3f}  accuracy {accuracy:.3f}  "
              f"(ln {cfg.data.n_actions} = {np.log(cfg.data.n_actions):.3f}; last {min(args.tail, args.steps)} of {args.steps} steps)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
