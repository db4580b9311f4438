"""Throughput against this machine's limits, in one run: batched env, labelled generator, trainer.

Each figure is printed beside the limit it is measured against, with the ratio:

* limits, measured first: stream bandwidth (``numpy.copyto`` of 512 MB, bytes read + written per
  second, one thread), random-access rate (independent 64-byte reads at random places in 1 GB, one
  thread: what a step bound by memory latency can reach) and the float32 matmul peak (``jnp.dot`` of
  two 4096 x 4096 matrices, 2 n^3 FLOPs, all cores);
* batched env: ``gym.make_vec("AnyMDP-v0", vectorization_mode="vector_entry_point")``, one thread,
  N = 4096 tasks (a pool of 64 sampled tasks tiled: the tables are still laid out per task, so
  the memory traffic is that of N distinct tasks), best of three runs of 280 random-action steps.
  A step touches ``ENV_RANDOM_LINES`` cache lines at places that depend on the task and state
  (the transition row, its alias record, the observation id, the episode-end flag, the oracle
  value) and about ``ENV_SEQUENTIAL_BYTES`` of per-env arrays read or written in order. Bounds:
  bandwidth / (64 x lines + sequential bytes), and the random-access rate / lines; the issue's
  targets (6 M steps/s at S = 128, 8.5 M at S = 16) are 80 % of a prototype's rates;
* labelled generator (``SequenceGenerator``, default ``GeneratorConfig``: behaviour mixture,
  learners, oracle labels, tags) in one process and in one process per core, against the env's
  own stepping of the same tasks in a compiled loop (the generator cannot be faster than its env)
  and the target of 5 M steps/s on two cores at S = 16;
* trainer tokens/s on random batches (``bench_train.time_training``) and achieved FLOP/s, with
  ``device_check.flops_per_token`` (6 x matmul parameters per token plus the GLA chunk terms,
  formula in that module), against the matmul peak.

    python benchmarks/bench_limits.py [--sections limits env generator trainer] [--states 16 64 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark scripts

ENV_RANDOM_LINES = 5
ENV_SEQUENTIAL_BYTES = 200
ENV_TARGETS = {16: 8.5e6, 128: 6.0e6}
GENERATOR_TARGET = 5.0e6
TRAINER_CONFIGS = ("configs/ladder/anymdp-16.yaml", "configs/cpu.yaml")


def best_of(n: int, fn) -> float:
    """Shortest wall time of ``n`` calls of ``fn``."""
    best = np.inf
    for _ in range(n):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@njit(cache=True)
def _random_reads(table, n_reads, seed):
    """Sum of ``n_reads`` int64 entries at random places, 16 independent chains at a time."""
    mask = np.uint64(table.size - 1)
    state = np.uint64(seed)
    total = 0
    for _ in range(n_reads // 16):
        for _k in range(16):
            state = state * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
            total += table[(state >> np.uint64(17)) & mask]
    return total


def measure_limits() -> dict:
    import jax
    import jax.numpy as jnp

    src = np.ones(64 * 2**20, np.float64)  # 512 MB
    dst = np.empty_like(src)
    bandwidth = 2 * src.nbytes / best_of(3, lambda: np.copyto(dst, src))
    del src, dst
    table = np.arange(2**27, dtype=np.int64)  # 1 GB: far larger than the caches
    _random_reads(table, 16, 1)
    n_reads = 2**24
    random_rate = n_reads / best_of(3, lambda: _random_reads(table, n_reads, 7))
    del table
    x = jnp.ones((4096, 4096), jnp.float32)
    dot = jax.jit(lambda a: a @ a)
    dot(x).block_until_ready()
    peak = 2 * 4096**3 / best_of(3, lambda: dot(x).block_until_ready())
    limits = {"bandwidth": bandwidth, "random_reads": random_rate, "peak_flops": peak}
    print(f"limits: stream bandwidth {bandwidth / 1e9:.1f} GB/s (one thread), random 64-byte reads "
          f"{random_rate / 1e6:.0f} M/s (one thread), float32 matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"({len(os.sched_getaffinity(0))} cores)", flush=True)
    return limits


def bench_env(states, limits: dict, n_envs: int = 4096, n_steps: int = 280) -> None:
    import gymnasium as gym

    import anymdp_gym  # noqa: F401  (registers the env ids)
    from bench_generate import tiled_tasks

    line_bytes = 64 * ENV_RANDOM_LINES + ENV_SEQUENTIAL_BYTES
    print(f"\nbatched env, one thread, {n_envs} tasks, best of 3 x {n_steps} steps "
          f"({ENV_RANDOM_LINES} random lines + ~{ENV_SEQUENTIAL_BYTES} B sequential per step)")
    print(f"{'S':>5} {'M steps/s':>10} {'bandwidth bound':>16} {'ratio':>6} {'random-read bound':>18} {'ratio':>6} "
          f"{'target':>7} {'ratio':>6}")
    for size in states:
        tasks = tiled_tasks(n_envs, size)
        env = gym.make_vec("AnyMDP-v0", num_envs=n_envs, vectorization_mode="vector_entry_point", n_states=size)
        env.reset(seed=0, options={"task": tasks})
        actions = np.random.default_rng(0).integers(0, env.single_action_space.n, (n_steps, n_envs))
        env.step(actions[0])

        def play():
            for a in actions:
                env.step(a)

        rate = n_envs * n_steps / best_of(3, play)
        env.close()
        bw_bound = limits["bandwidth"] / line_bytes if limits else np.nan
        rr_bound = limits["random_reads"] / ENV_RANDOM_LINES if limits else np.nan
        target = ENV_TARGETS.get(size, np.nan)
        print(f"{size:>5} {rate / 1e6:>10.2f} {bw_bound / 1e6:>14.1f} M {rate / bw_bound:>6.2f} "
              f"{rr_bound / 1e6:>16.1f} M {rate / rr_bound:>6.2f} {target / 1e6:>6.1f}M {rate / target:>6.2f}", flush=True)


def bench_generator(states, seq_len: int = 65536, per_process: int = 32) -> None:
    from anymdp_gym.dynamics import compile_tasks
    from anymdp_gym.random_stream import seed_streams
    from bench_generate import _random_play, bench_generator as generation_rate, task_pool

    cores = len(os.sched_getaffinity(0))
    print(f"\nlabelled generator, default GeneratorConfig, {per_process} sequences of {seq_len} steps per process")
    print(f"{'S':>5} {'1 process':>10} {'env alone':>10} {'ratio':>6} {f'{cores} processes':>12} {'per core':>9} "
          f"{'target':>7} {'ratio':>6}")
    for size in states:
        tasks = task_pool(size, per_process)
        tables = compile_tasks(tasks)
        rng = np.random.default_rng(0)
        _random_play(tables, 2, 5, seed_streams(rng, len(tasks)), seed_streams(rng, len(tasks)))
        env_steps = 20_000
        env_rate = len(tasks) * env_steps / best_of(
            3, lambda: _random_play(tables, env_steps, 5, seed_streams(rng, len(tasks)), seed_streams(rng, len(tasks))))
        one = generation_rate(size, seq_len, per_process, 1)
        many = generation_rate(size, seq_len, per_process, cores)
        target = GENERATOR_TARGET if size == 16 else np.nan
        print(f"{size:>5} {one / 1e6:>9.2f}M {env_rate / 1e6:>9.2f}M {one / env_rate:>6.2f} {many / 1e6:>11.2f}M "
              f"{many / cores / 1e6:>8.2f}M {target / 1e6:>6.1f}M {many / target:>6.2f}", flush=True)


def bench_trainer(configs, limits: dict, n_segments: int = 12) -> None:
    import jax

    from bench_train import time_training
    from device_check import flops_per_token
    from omnirl_jax.config import load_config

    peak = limits.get("peak_flops", np.nan)
    print(f"\ntrainer on random batches, {n_segments - 1} timed steps after one compiling step, one device")
    print(f"{'config':>32} {'tokens/step':>11} {'tokens/s':>9} {'FLOPs/token':>12} {'GFLOP/s':>8} {'of peak':>8}")
    for path in configs:
        cfg = load_config(path)
        row = time_training(cfg, n_segments, jax.devices()[:1])
        flops = flops_per_token(cfg)["total"] or np.nan
        achieved = row["tokens_per_s"] * flops
        tokens = cfg.train.batch_size * cfg.train.segment_len * cfg.model.tokens_per_step
        print(f"{path:>32} {tokens:>11} {row['tokens_per_s']:>9.0f} {flops / 1e6:>10.2f} M {achieved / 1e9:>8.1f} "
              f"{achieved / peak:>8.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["limits", "env", "generator", "trainer"],
                        choices=["limits", "env", "generator", "trainer"])
    parser.add_argument("--states", type=int, nargs="+", default=[16, 64, 128], help="env sizes of the env section")
    parser.add_argument("--configs", nargs="+", default=list(TRAINER_CONFIGS))
    args = parser.parse_args()
    limits = measure_limits() if "limits" in args.sections else {}
    if "env" in args.sections:
        bench_env(args.states, limits)
    if "generator" in args.sections:
        bench_generator([16, 128])
    if "trainer" in args.sections:
        bench_trainer(args.configs, limits)


if __name__ == "__main__":
    main()
