"""Data-generation throughput on this machine: batched env steps, labelled generator steps.

Sections (one table each):

1. batched env steps/s -- N tasks stepped with random actions by ``anymdp_gym.dynamics.step_env``
   in one ``@njit`` loop, and through ``gym.make_vec("AnyMDP-v0", vectorization_mode=
   "vector_entry_point")`` (one Python ``step`` per N transitions);
2. the same single env under ``gymnasium.vector.SyncVectorEnv`` (small N, few steps: it is slow),
   and the speed-up of our vector env over it at each S;
3. labelled steps/s of the full generator (``SequenceGenerator``: behaviour policy, learners,
   oracle labels, tags) in 1 process and in all worker processes (spawned and warmed up first),
   plus ``omnirl-generate`` end to end (process start, shard writes, fsync, sha256);
4. wall time of one 512k-step, 128-state sequence.

Tasks: each N-task batch tiles a pool of distinct sampled tasks (sampling 4096 tasks of 128
states alone would take ~40 s); the tables are still laid out per task, so memory traffic is
that of N tasks.

    python benchmarks/bench_generate.py [--envs 1024 4096] [--states 16 64 128] [--workers K]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.vector import SyncVectorEnv
from numba import njit

import anymdp_gym  # noqa: F401  (registers the env ids)

from anymdp_gym.dynamics import compile_tasks, reset_env, step_env
from anymdp_gym.random_stream import seed_streams, uniform
from anymdp_gym.sampling import sample_task

N_ACTIONS = 5


@njit(cache=True)
def _random_play(tables, n_steps, n_actions, env_rng, act_rng):
    """``n_steps`` random-action steps of every task, with resets; returns a checksum."""
    n = env_rng.size
    state = np.empty(n, np.int64)
    count = np.zeros(n, np.int64)
    for i in range(n):
        state[i] = reset_env(tables, i, env_rng)[0]
    total = 0.0
    for _ in range(n_steps):
        for i in range(n):
            a = int(uniform(act_rng, i) * n_actions)
            s, _, r, _, terminated = step_env(tables, i, state[i], a, env_rng)
            total += r
            count[i] += 1
            if terminated or count[i] >= tables.max_steps[i]:
                s = reset_env(tables, i, env_rng)[0]
                count[i] = 0
            state[i] = s
    return total


def task_pool(n_states: int, size: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [sample_task(n_states, N_ACTIONS, seed=rng) for _ in range(size)]


def tiled_tasks(n_envs: int, n_states: int) -> list:
    tasks = task_pool(n_states, 64)
    return [tasks[i % len(tasks)] for i in range(n_envs)]


def bench_batched(tasks: list, n_steps: int) -> float:
    n_envs = len(tasks)
    tables = compile_tasks(tasks)
    rng = np.random.default_rng(1)
    _random_play(tables, 2, N_ACTIONS, seed_streams(rng, n_envs), seed_streams(rng, n_envs))  # compile / load
    env_rng, act_rng = seed_streams(rng, n_envs), seed_streams(rng, n_envs)
    t = time.perf_counter()
    _random_play(tables, n_steps, N_ACTIONS, env_rng, act_rng)
    return n_envs * n_steps / (time.perf_counter() - t)


def vector_steps_per_s(env, n_steps: int) -> float:
    """Env-steps/s of a reset Gymnasium vector env under random actions (first step untimed)."""
    actions = np.random.default_rng(0).integers(0, N_ACTIONS, size=(n_steps + 1, env.num_envs))
    env.step(actions[0])
    t = time.perf_counter()
    for a in actions[1:]:
        env.step(a)
    rate = env.num_envs * n_steps / (time.perf_counter() - t)
    env.close()
    return rate


def bench_vector_env(tasks: list, n_steps: int) -> float:
    """``gym.make_vec(..., vectorization_mode="vector_entry_point")`` playing ``tasks``."""
    env = gym.make_vec("AnyMDP-v0", num_envs=len(tasks), vectorization_mode="vector_entry_point",
                       n_states=tasks[0].n_obs, n_actions=N_ACTIONS)
    env.reset(seed=0, options={"task": tasks})
    return vector_steps_per_s(env, n_steps)


def bench_sync_vector(n_envs: int, n_states: int, n_steps: int) -> float:
    """``gymnasium.vector.SyncVectorEnv`` over ``n_envs`` single ``AnyMDP-v0`` envs."""
    env = SyncVectorEnv([lambda: gym.make("AnyMDP-v0", n_states=n_states, n_actions=N_ACTIONS)] * n_envs)
    env.reset(seed=0)
    return vector_steps_per_s(env, n_steps)


def _generate(n_states: int, seq_len: int, ids: list) -> int:
    """Labelled steps made by one process: ``len(ids)`` sequences of ``seq_len`` in 8k chunks."""
    from omnirl_jax.data.generate import GeneratorConfig, SequenceGenerator

    gen = SequenceGenerator(GeneratorConfig(n_states=n_states, seq_len=seq_len), 0, ids)
    for t0 in range(0, seq_len, 8192):
        gen.run(min(8192, seq_len - t0))
    return len(ids) * seq_len


def bench_generator(n_states: int, seq_len: int, per_worker: int, workers: int) -> float:
    """Labelled steps/s over ``workers`` processes (1: this process), each ``per_worker`` sequences."""
    _generate(n_states, 64, [10_000])  # compile / load the cache here too
    if workers == 1:
        t = time.perf_counter()
        steps = _generate(n_states, seq_len, list(range(per_worker)))
        return steps / (time.perf_counter() - t)
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_generate, [n_states] * workers, [64] * workers, [[10_000 + w] for w in range(workers)]))
        t = time.perf_counter()
        futures = [pool.submit(_generate, n_states, seq_len, list(range(w * per_worker, (w + 1) * per_worker)))
                   for w in range(workers)]
        steps = sum(f.result() for f in futures)
        return steps / (time.perf_counter() - t)


def bench_cli(n_states: int, seq_len: int, num_sequences: int, workers: int) -> float:
    from omnirl_jax.data.cli import main

    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        t = time.perf_counter()
        assert main(["--out", str(Path(out) / "set"), "--n-states", str(n_states), "--seq-len", str(seq_len),
                     "--num-sequences", str(num_sequences), "--num-shards", str(max(1, num_sequences // 4)),
                     "--workers", str(workers)]) == 0
        return num_sequences * seq_len / (time.perf_counter() - t)


def fmt(rate: float) -> str:
    return f"{rate / 1e6:8.2f} M"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--states", type=int, nargs="+", default=[16, 64, 128])
    p.add_argument("--env-steps", type=int, default=400, help="steps per env in the batched loops")
    p.add_argument("--sync-envs", type=int, default=8)
    p.add_argument("--sync-steps", type=int, default=300)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--gen-seq-len", type=int, default=65536)
    p.add_argument("--gen-sequences", type=int, default=48, help="sequences per process in section 3")
    p.add_argument("--cli-seq-len", type=int, default=262144, help="seq_len of the CLI runs (long: start-up amortised)")
    args = p.parse_args()
    print(f"machine: {len(os.sched_getaffinity(0))} cores; numpy {np.__version__}")

    print("\n1-2. batched env steps/s (random actions; resets included)")
    print(f"{'N':>6} {'S':>5} {'njit loop':>12} {'make_vec':>12} {'Sync(N=' + str(args.sync_envs) + ')':>12} {'vec/sync':>9}")
    sync = {s: bench_sync_vector(args.sync_envs, s, args.sync_steps) for s in args.states}
    for n in args.envs:
        for s in args.states:
            tasks = tiled_tasks(n, s)
            loop = bench_batched(tasks, args.env_steps)
            vec = bench_vector_env(tasks, max(20, args.env_steps // 4))
            ratio = f"{vec / sync[s]:8.0f}x"
            print(f"{n:>6} {s:>5} {fmt(loop):>12} {fmt(vec):>12} {fmt(sync[s]):>12} {ratio:>9}", flush=True)

    print(f"\n3. labelled generator steps/s (seq_len {args.gen_seq_len}, {args.gen_sequences} sequences per process)")
    print(f"{'S':>5} {'1 process':>12} {f'{args.workers} processes':>14} {'CLI 1 worker':>14} {f'CLI {args.workers} workers':>14}")
    for s in (16, 128):
        one = bench_generator(s, args.gen_seq_len, args.gen_sequences, 1)
        many = bench_generator(s, args.gen_seq_len, args.gen_sequences, args.workers)
        cli_one = bench_cli(s, args.cli_seq_len, args.gen_sequences, 1)
        cli_many = bench_cli(s, args.cli_seq_len, args.gen_sequences * args.workers, args.workers)
        print(f"{s:>5} {fmt(one):>12} {fmt(many):>14} {fmt(cli_one):>14} {fmt(cli_many):>14}", flush=True)
    print(f"  (CLI: seq_len {args.cli_seq_len}, {args.gen_sequences} sequences per worker, end to end: process start,"
          " task sampling, shard writes, fsync, sha256)")

    print("\n4. one 512k-step sequence, 128 states (task sampling + oracles + generation)")
    t = time.perf_counter()
    _generate(128, 524288, [0])
    print(f"  {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
