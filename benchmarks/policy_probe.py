"""Can the policy path learn in-context rules at all? A few-minute probe before a long ladder run.

The policy head is trained without the world-model terms (weights 0; the config's behaviour-cloning
term, ``loss.behaviour``, stays), with no context warm-up, on a ladder rung's generated sequences
(default the 16-state rung), with the label replaced by a rule computable from the visible history:

* ``previous``: the behaviour action of the previous step (local: one step back);
* ``majority``: the most frequent behaviour action so far in the sequence (a count over the whole
  context, the simplest long-range aggregation an in-context policy needs);
* ``state_last``, ``state_majority``: the behaviour action last / most often taken so far in the
  current observation (recall keyed on the state: what an in-context policy is built from);
* ``best_reward``: the action with the highest mean reward so far over the whole sequence
  (averaging keyed on the action alone: the bandit skill);
* ``state_best_last_reward``: the action whose last reward in the current observation was highest
  (recall keyed on the state-action pair, no averaging);
* ``state_best_reward``: the action with the highest mean immediate reward so far in the current
  observation (averaging keyed on the state and action: the simplest rule that uses rewards,
  and the skill a contextual bandit needs);
* ``state_plan``: the context plan, the greedy action of value iteration on the context's
  empirical model so far (``omnirl_jax.data.context_plan``, the batches' ``plan``): the label's
  planning, computed from what the context shows (on bandits it is ``state_best_reward``);
* ``label``: the real label (the generator's ``label_policy``, opt3 as the rungs train on).

With ``--checkpoint RUN`` it trains nothing: it reads a trained run's greedy policy on fresh
sequences of the run's own data (one pass over each whole sequence) and prints, per span of steps
of the sequence, how often it equals the label, how often the rules above do, and how often the
model follows each rule: where a policy stops improving along its context, and which rule it is
closest to (``trained_agreement``). With ``--online`` as well, the contexts are the model's own: it
plays the first tasks of a suite online (``--suite``, default its run's ``eval.suite``; the ladder's
runs need ``--suite``, their suite is the rung's), sampled as the run's ``eval`` section says
(``--temperature`` overrides its temperature), and the table says, per span, how many actions it has
tried in the current observation, how often the action it took, its greedy action (re-read in one
pass; bandit suites only) and the best-mean-reward rule on its own history equal the oracle's
action (``online_agreement``): whether what it lacks is reading its context or gathering one.

For each target it prints the policy loss and accuracy, averaged over the last ``--tail`` steps, the loss
curve (mean of each ``--tail`` steps: a plateau at ln A that ends late is not a no), the step where
it left chance (``LEFT_CHANCE``), and two references, the agreement of the target with a rule over the same steps:

* *shortcut*: the previous action or the most frequent action so far (the better of the two). The
  rules are deterministic, so a policy path that can aggregate context drives them to accuracy ~1;
  an accuracy at or below the shortcut means the model has learned no more than the two cheap
  rules (a state-keyed target is then not recalled by state at all);
* *reward rule*: ``state_best_reward``, the simplest use of rewards. For ``label`` it is a lower
  bound on what in-context use of rewards can reach: with ``--set
  "data.generator.policy_weights={random_drift: 1.0}"`` the behaviour says nothing about the label,
  so an accuracy above chance (1 / A) can only come from rewards and transitions.

With ``--set loss.plan_steps=N`` the model trains on the context plan for N steps and on the target
after (the trainer's curriculum, ``LossConfig.plan_steps``): whether planning taught first carries
into the label (``--targets label``; the figures are then the target's).

Why a probe: a 50-minute ladder run whose policy stays at ln A says only that it failed; this says
whether the mechanism the policy needs is learnable by the model of the config, in minutes.

    python benchmarks/policy_probe.py                   # configs/ladder/anymdp-16.yaml, 150 steps per target
    python benchmarks/policy_probe.py --set model.n_heads=4 --targets majority
    python benchmarks/policy_probe.py --targets label --set loss.behaviour=0   # without behaviour cloning
    python benchmarks/policy_probe.py --targets label --set "data.generator.policy_weights={random_drift: 1.0}"
    python benchmarks/policy_probe.py --checkpoint runs/ladder/cbandit-8   # a trained rung, read
    python benchmarks/policy_probe.py --checkpoint runs/ladder/cbandit-8 --online --suite cbandit-8   # its own play
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
TARGETS = ("previous", "majority", "state_last", "state_majority", "best_reward", "state_best_last_reward",
           "state_best_reward", "state_plan", "label")
PROBE_OVERRIDES = ["loss.next_state=0", "loss.reward=0", "loss.warmup_steps=0", "data.workers=0",
                   "data.generator.plan_label=true"]
"""No world-model terms (the config's behaviour-cloning term stays), every step weighted alike,
data generated in this process, with the context plan."""


def rule_labels(target: str, batch: dict, n_states: int, n_actions: int) -> np.ndarray:
    """``[B, T]`` labels of ``target`` for a loader batch; the null action ``n_actions`` (masked)
    where a rule has no answer yet. Ties go to the lowest action id."""
    obs, action, reward = batch["obs"], batch["action"], batch["reward"]
    if target == "label":
        return batch["label"]
    if target == "state_plan":
        return batch["plan"]
    out = np.full_like(action, n_actions)
    if target == "previous":
        out[:, 1:] = action[:, :-1]
        return out
    rows = np.arange(action.shape[0])
    real = action < n_actions
    keyed = target.startswith("state_")  # else every step counts in state 0
    counts = np.zeros((action.shape[0], n_states, n_actions))
    rewards = np.zeros_like(counts)
    last_reward = np.full_like(counts, -np.inf)
    last = np.full((action.shape[0], n_states), n_actions)
    for t in range(action.shape[1]):
        s = obs[:, t] if keyed else np.zeros_like(obs[:, t])
        seen = counts[rows, s]
        if target == "state_last":
            out[:, t] = last[rows, s]
        elif target in ("state_best_reward", "best_reward", "state_best_last_reward"):
            if target == "state_best_last_reward":
                value = last_reward[rows, s]
            else:
                value = np.where(seen > 0, rewards[rows, s] / np.maximum(seen, 1), -np.inf)
            out[:, t] = np.where(seen.sum(axis=1) > 0, value.argmax(axis=1), n_actions)
        else:  # majority, state_majority
            out[:, t] = np.where(seen.sum(axis=1) > 0, seen.argmax(axis=1), n_actions)
        r, a, sr = rows[real[:, t]], action[real[:, t], t], s[real[:, t]]
        counts[r, sr, a] += 1
        rewards[r, sr, a] += reward[real[:, t], t]
        last_reward[r, sr, a] = reward[real[:, t], t]
        last[r, sr] = a
    return out


def agreement(rules: tuple, target: np.ndarray, batch: dict, n_states: int, n_actions: int) -> float:
    """How often ``target`` equals the best of ``rules`` (names of ``rule_labels`` targets), over the
    steps where the target is defined; a rule without an answer yet counts as a miss."""
    valid = target != n_actions
    return max(float(np.mean(rule_labels(rule, batch, n_states, n_actions)[valid] == target[valid]))
               for rule in rules)


SHORTCUT, REWARD_RULE = ("previous", "majority"), ("state_best_reward",)


LEFT_CHANCE = 0.9
"""A probe has left chance once a window's mean policy loss is below this fraction of ln A (the
plateau sits within 1 % of ln A; 0.9 is well clear of its noise at a batch of 8 x 256)."""


def probe(cfg, target: str, tail: int) -> tuple[tuple[float, float, float, float], np.ndarray]:
    """Trains a fresh model on ``target`` for ``cfg.train.steps`` steps (the first
    ``loss.plan_steps`` of them on the context plan, the trainer's curriculum). Returns the last
    ``tail`` steps' mean policy loss, accuracy, and agreement of the shortcut and of the reward rule
    with the target; and the loss curve, the mean policy loss of each window of ``tail`` steps."""
    n_states, n_actions, steps = cfg.data.generator.n_states, cfg.data.generator.n_actions, cfg.train.steps
    history = []
    with make_loader(cfg.data, batch_size=cfg.train.batch_size, segment_len=cfg.train.segment_len,
                     seed=cfg.train.seed) as loader:
        relabelled = (dict(batch, label=rule_labels(target, batch, n_states, n_actions))
                      for batch in (next(loader) for _ in range(steps)))
        for k, (batch, metrics) in enumerate(fresh_steps(cfg, relabelled)):
            references = [agreement(rules, batch["label"], batch, n_states, n_actions) if k >= steps - tail
                          else np.nan for rules in (SHORTCUT, REWARD_RULE)]
            history.append((metrics["policy_loss"], metrics["policy_accuracy"], *references))
    losses = np.array([h[0] for h in history])
    curve = losses[: losses.size // tail * tail].reshape(-1, tail).mean(axis=1)
    return tuple(float(x) for x in np.mean(history[-tail:], axis=0)), curve


def left_chance(curve: np.ndarray, tail: int, chance: float) -> int | None:
    """The step ending the first window of ``curve`` below ``LEFT_CHANCE * chance``, or None."""
    below = np.flatnonzero(curve < LEFT_CHANCE * chance)
    return int((below[0] + 1) * tail) if below.size else None


def span_edges(length: int) -> np.ndarray:
    """Edges of the spans of steps the readings report: short early, doubling later."""
    return np.unique(np.clip([0, 32, 128, 256, 512, 1024, 2048, 4096, length], 0, length))


READ_RULES = ("state_best_reward", "state_best_last_reward", "state_majority", "state_last")
"""The rules a trained policy is compared with (``--checkpoint``)."""


def trained_agreement(workdir: str, n_sequences: int, seed: int) -> tuple[np.ndarray, dict]:
    """A trained run's greedy actions on ``n_sequences`` fresh sequences of its config's data
    (``seed`` not the run's own), read in one pass each. Returns the span edges (steps of the
    sequence) and, per span, the agreement of: the model and the label (``"model"``), each rule
    and the label (``rule``), the model and each rule (``"model=" + rule``); over labelled steps."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from omnirl_jax.eval.restore import load_model

    loaded = load_model(workdir, warn=lambda *_: None)
    cfg, gen = loaded.config, loaded.config.data.generator
    with make_loader(dataclasses.replace(cfg.data, workers=0), batch_size=n_sequences, segment_len=gen.seq_len,
                     seed=seed) as loader:
        batch = next(loader)
    model = nnx.merge(loaded.runner.graphdef, loaded.runner.params)
    inputs = {k: jnp.asarray(batch[k]) for k in ("obs", "action", "reward", "prompt", "tag")}
    outputs, _ = jax.jit(lambda x: model(x, model.init_carry(n_sequences)))(inputs)
    actions = {"model": np.asarray(outputs["policy_logits"]).argmax(-1)}
    actions.update((rule, rule_labels(rule, batch, gen.n_states, gen.n_actions)) for rule in READ_RULES)
    label, labelled = batch["label"], batch["label"] != gen.n_actions
    edges = span_edges(gen.seq_len)
    spans = list(zip(edges[:-1], edges[1:]))
    agree = lambda a, b: np.array([np.mean((a == b)[:, lo:hi][labelled[:, lo:hi]]) for lo, hi in spans])
    table = {name: agree(act, label) for name, act in actions.items()}
    table.update((f"model={rule}", agree(actions["model"], actions[rule])) for rule in READ_RULES)
    return edges, table


def online_agreement(workdir: str, suite: str | None, n_tasks: int, temperature: float | None,
                     seed: int) -> tuple[np.ndarray, dict]:
    """A trained run played online on the first ``n_tasks`` tasks of ``suite`` (None: its config's
    ``eval.suite``), sampled at ``temperature`` (None: its ``eval.temperature``) after its
    ``eval.gather_steps`` (``rollout.Sampling``). Returns the span
    edges and, per span of interaction steps: the mean number of actions tried so far in the
    current observation, and how often the action taken, the model's greedy action on the same
    history (bandit suites, where every pull is a one-step episode and the history holds no
    terminal records) and the ``state_best_reward`` rule on its own history equal the oracle's
    action in the true state (``baselines.oracle_table``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from anymdp_gym.jax import dynamics as env_jax
    from omnirl_jax.data.schema import TAG_ID
    from omnirl_jax.eval.baselines import oracle_table
    from omnirl_jax.eval.restore import load_model
    from omnirl_jax.eval.rollout import PROMPT, Sampling
    from omnirl_jax.eval.suites import get_suite

    loaded = load_model(workdir, warn=lambda *_: None)
    cfg, gen = loaded.config, loaded.config.data.generator
    suite = get_suite(suite or cfg.eval.suite)
    tasks = suite.tasks(suite.groups()[0], gen.n_states, n_tasks)
    runner = loaded.runner
    sampling = Sampling.of(cfg.eval, temperature)
    traj, _ = runner.rollout(runner.init_carry(len(tasks)), env_jax.from_tasks(tasks, gen.n_actions),
                             jax.random.key(seed), n_steps=suite.steps, tag=TAG_ID["unk"], sampling=sampling)
    traj = jax.device_get(traj)
    obs, action = np.asarray(traj.obs), np.asarray(traj.action)
    history = {"obs": obs, "action": action, "reward": np.asarray(traj.reward, np.float32)}
    label = np.stack([oracle_table(task, gen.n_states)[o] for task, o in zip(tasks, obs)])
    actions = {"acted": action, "rule": rule_labels("state_best_reward", history, gen.n_states, gen.n_actions)}
    if np.asarray(traj.terminated).all():  # one-step episodes: the trajectory is the model's whole history
        model = nnx.merge(runner.graphdef, runner.params)
        batch = {k: jnp.asarray(v) for k, v in history.items()}
        batch.update(prompt=jnp.full_like(batch["obs"], PROMPT), tag=jnp.full_like(batch["obs"], TAG_ID["unk"]))
        outputs, _ = jax.jit(lambda x: model(x, model.init_carry(len(tasks))))(batch)
        actions["greedy"] = np.asarray(outputs["policy_logits"]).argmax(-1)
    seen = np.zeros(obs.shape[:1] + (gen.n_states, gen.n_actions), bool)
    tried = np.zeros(obs.shape)
    rows = np.arange(obs.shape[0])
    for t in range(obs.shape[1]):
        tried[:, t] = seen[rows, obs[:, t]].sum(axis=1)
        seen[rows, obs[:, t], action[:, t]] = True
    edges = span_edges(obs.shape[1])
    spans = list(zip(edges[:-1], edges[1:]))
    per_span = lambda x: np.array([np.mean(x[:, lo:hi]) for lo, hi in spans])
    table = {"actions tried in this observation": per_span(tried)}
    table.update((f"{name} = oracle", per_span(act == label)) for name, act in actions.items())
    if "greedy" in actions:
        table["greedy = rule"] = per_span(actions["greedy"] == actions["rule"])
    return edges, table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "ladder" / "anymdp-16.yaml"))
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per target")
    parser.add_argument("--tail", type=int, default=30, help="final steps averaged in the report")
    parser.add_argument("--checkpoint", metavar="RUN", help="read this trained run's policy instead of training")
    parser.add_argument("--sequences", type=int, default=16, help="fresh sequences read (--checkpoint)")
    parser.add_argument("--online", action="store_true", help="with --checkpoint: read the model on its own play")
    parser.add_argument("--suite", help="evaluation suite played (--online; default the run's eval.suite)")
    parser.add_argument("--tasks", type=int, default=64, help="evaluation tasks played (--online)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (--online; default the run's)")
    args = parser.parse_args(argv)
    if args.online and not args.checkpoint:
        parser.error("--online reads a trained run: give --checkpoint RUN")
    if args.checkpoint:
        if args.online:
            edges, table = online_agreement(args.checkpoint, args.suite, args.tasks, args.temperature, seed=0)
            print(f"online, the model's own play on {args.tasks} evaluation tasks; interaction steps:")
        else:
            edges, table = trained_agreement(args.checkpoint, args.sequences, seed=args.sequences + 10_000)
            print(f"agreement over labelled steps, {args.sequences} fresh sequences; steps of the sequence:")
            table = {name + (" = label" if "=" not in name else ""): row for name, row in table.items()}
        print(f"{'':36s}" + "".join(f"{f'{lo}-{hi}':>11s}" for lo, hi in zip(edges[:-1], edges[1:])))
        for name, row in table.items():
            print(f"{name:36s}" + "".join(f"{x:11.3f}" for x in row))
        return 0
    cfg = load_config(args.config, PROBE_OVERRIDES + [f"train.steps={args.steps}"] + args.set)
    # One segment per sequence: every batch starts fresh sequences, so the carry is always reset.
    generator = dataclasses.replace(cfg.data.generator, seq_len=cfg.train.segment_len)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, generator=generator))
    for target in args.targets.split(","):
        if target not in TARGETS:
            parser.error(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
        tail = min(args.tail, args.steps)
        (loss, accuracy, shortcut, reward_rule), curve = probe(cfg, target, tail)
        chance = np.log(cfg.data.generator.n_actions)
        name = target if not cfg.loss.plan_steps else f"{target}, plan first {cfg.loss.plan_steps} steps:"
        print(f"{name:17s} policy loss {loss:.3f}  accuracy {accuracy:.3f}  shortcut {shortcut:.3f}  "
              f"reward rule {reward_rule:.3f}  left chance at step {left_chance(curve, tail, chance)}  "
              f"(ln {cfg.data.generator.n_actions} = {chance:.3f}; last {tail} of {args.steps} steps)\n"
              f"{'':17s} loss per {tail} steps: {' '.join(f'{x:.3f}' for x in curve)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
