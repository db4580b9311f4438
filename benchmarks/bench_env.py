"""Speed of anymdp_gym against the reference (xenoverse), printed as tables.

Measures task sampling, value iteration, single-env ``step`` through ``gym.make``, the batched
env's throughput on one core (issue acceptance: >= 5 M steps/s at S = 128 and >= 10 M steps/s
at S = 16, 4096 envs each with its own task) and the Numba JIT cost of a fresh process.

Throughput is reported from wall time and from this process's CPU time: on a shared machine
the CPU-time figure is the one-core speed. Default run: a few minutes; ``--full`` adds
xenoverse at S = 256 and more repetitions.

    python benchmarks/bench_env.py [--full] [--num-envs 4096] [--batched-sizes 16 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np

import anymdp_gym
from anymdp_gym import sample_task, value_iteration

try:
    import xenoverse.anymdp as xeno
    from xenoverse.anymdp.solver import update_value_matrix
except ImportError:  # the reference is optional
    xeno = None

SEED_BASE = 10_000  # sampler seeds used by every section


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]
    print(f"\n## {title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


def ratio(theirs, ours) -> str:
    return "-" if theirs is None else f"{theirs / ours:.0f}x"


def fmt_ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


# --------------------------------------------------------------------------- sections
def bench_sampling(sizes, ours_n, xeno_n, xeno_max_size) -> None:
    sample_task(16, seed=0)  # compile outside the timing
    rows = []
    for size in sizes:
        ours = statistics.median(timed(sample_task, size, seed=SEED_BASE + k) for k in range(ours_n))
        theirs = None
        if xeno is not None and size <= xeno_max_size:
            theirs = statistics.median(
                timed(xeno.AnyMDPTaskSampler, size, 5, seed=SEED_BASE + k) for k in range(xeno_n)
            )
        rows.append([size, fmt_ms(ours), fmt_ms(theirs), ratio(theirs, ours)])
    table(
        f"task sampling, median ms (ours over {ours_n} seeds, xenoverse over {xeno_n})",
        ["S", "anymdp_gym", "xenoverse", "speed-up"], rows,
    )


def bench_value_iteration(sizes, gamma=0.99) -> None:
    rows = []
    for size in sizes:
        task = sample_task(size, seed=SEED_BASE)
        value_iteration(task, gamma)
        ours = min(timed(value_iteration, task, gamma) for _ in range(5))
        theirs = None
        if xeno is not None:
            vm = np.zeros(task.transition.shape[:2])
            args = (task.transition, task.reward, gamma, vm)
            update_value_matrix(*args)
            theirs = min(timed(update_value_matrix, *args) for _ in range(2))
        rows.append([size, fmt_ms(ours), fmt_ms(theirs), ratio(theirs, ours)])
    table(f"value iteration at gamma={gamma}, best ms", ["S", "anymdp_gym", "xenoverse", "speed-up"], rows)


def _step_time(env, n_steps: int) -> float:
    """Mean seconds per ``env.step``, resets excluded, fixed action sequence."""
    actions = np.random.default_rng(0).integers(0, env.action_space.n, n_steps).tolist()
    env.reset()
    total, done = 0.0, False
    for a in actions:
        if done:
            env.reset()
        start = time.perf_counter()
        _, _, term, trunc, _ = env.step(a)
        total += time.perf_counter() - start
        done = term or trunc
    return total / n_steps


def bench_single_step(sizes, n_steps: int) -> None:
    rows = []
    for size in sizes:
        task = sample_task(size, seed=SEED_BASE)
        env = gym.make("AnyMDP-v0", task=task)
        env.reset(seed=0)
        ours = min(_step_time(env, n_steps) for _ in range(3))
        theirs = None
        if xeno is not None:
            ref = xeno.AnyMDPEnv(max_steps=task.max_steps)
            ref.set_task(task.to_xenoverse())
            theirs = min(_step_time(ref, n_steps) for _ in range(3))
        rows.append([size, f"{ours * 1e6:.2f}", "-" if theirs is None else f"{theirs * 1e6:.2f}",
                     "-" if theirs is None else f"{theirs / ours:.1f}x"])
    table(f"single env step through gym.make, mean us per step over {n_steps} steps (best of 3)",
          ["S", "anymdp_gym", "xenoverse", "speed-up"], rows)


def batched_throughput(envs, n_steps: int) -> tuple[float, float]:
    """Steps/s of a reset batched env over ``n_steps`` steps of all sub-envs, best of 3, from wall
    time and from this process's CPU time; a fixed random action sequence."""
    actions = np.random.default_rng(0).integers(0, envs.single_action_space.n, (n_steps, envs.num_envs))
    envs.step(actions[0])
    best_wall, best_cpu = np.inf, np.inf
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        for a in actions:
            envs.step(a)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    total = n_steps * envs.num_envs
    return total / best_wall, total / best_cpu


def bench_batched(sizes, num_envs: int, n_steps: int) -> None:
    rows = []
    for size in sizes:
        start = time.perf_counter()
        envs = gym.make_vec("AnyMDP-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", n_states=size)
        envs.reset(seed=SEED_BASE)
        setup = time.perf_counter() - start
        table_mb = sum(a.nbytes for a in envs.unwrapped._tables) / 1e6
        wall, cpu = batched_throughput(envs, n_steps)
        rows.append([size, num_envs, f"{setup:.1f}", f"{table_mb:.0f}", f"{wall / 1e6:.2f}", f"{cpu / 1e6:.2f}"])
        envs.close()
        del envs
    table(
        f"batched env (make_vec vector_entry_point), one core, {n_steps} steps of all envs (best of 3)",
        ["S", "envs", "setup s", "tables MB", "M steps/s wall", "M steps/s cpu"], rows,
    )


_JIT_SNIPPET = """
import time
t0 = time.perf_counter()
import gymnasium as gym
import anymdp_gym
t1 = time.perf_counter()
task = anymdp_gym.sample_task(16, seed=0)
t2 = time.perf_counter()
env = gym.make("AnyMDP-v0", task=task)
env.reset(seed=0)
env.step(0)
t3 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2:.2f}")
"""


def bench_jit() -> None:
    """Two fresh processes sharing a new, empty Numba cache dir: cold compile, then cache load."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for run in ("cold (compiles)", "warm (cache=True)"):
            out = subprocess.run([sys.executable, "-c", _JIT_SNIPPET], capture_output=True, text=True, check=True, env=env)
            imp, sample, step = (float(x) for x in out.stdout.split())
            rows.append([run, f"{imp:.2f}", f"{sample:.2f}", f"{step:.2f}", f"{imp + sample + step:.2f}"])
    table("fresh-process cost, s", ["run", "import", "1st sample_task", "1st make+reset+step", "total"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="xenoverse at S=256 too, more repetitions")
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--batched-sizes", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--batched-steps", type=int, default=200)
    parser.add_argument("--skip-batched", action="store_true")
    args = parser.parse_args()
    print(f"anymdp_gym vs xenoverse {'(not installed)' if xeno is None else ''}; numpy {np.__version__}, "
          f"gymnasium {gym.__version__}")
    bench_jit()
    bench_sampling([16, 32, 64, 128, 256], ours_n=9 if args.full else 5, xeno_n=3,
                   xeno_max_size=256 if args.full else 128)
    bench_value_iteration([16, 64, 128])
    bench_single_step([16, 64, 128], 20_000)
    if not args.skip_batched:
        bench_batched(args.batched_sizes, args.num_envs, args.batched_steps)


if __name__ == "__main__":
    main()
