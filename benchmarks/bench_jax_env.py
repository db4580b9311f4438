"""Steps per second of ``anymdp_gym.jax`` under ``jit(vmap)``, beside the Numba batched env on the
same tasks and gymnax classic envs of similar state counts, printed as one table.

Each JAX row runs ``--steps`` steps of ``--num-envs`` envs inside one jitted ``lax.scan`` (random
actions and per-env keys drawn inside it, as a JAX learner would), timed best of 3 after a
compiling call. AnyMDP rows give every env its own task (``EnvParams`` stacked on a leading
axis: ``S x A x S`` float32 tables, three of them, 1 MB per task at S = 128); the "one task"
rows share one task (vmap over states only) to show what the per-task tables cost. gymnax's
DeepSea (size 4: 16 cells) and FourRooms (104 cells) have discrete states of the two sizes;
CartPole is the classic control env. The Numba row steps the same tasks through
``gym.make_vec(..., vectorization_mode="vector_entry_point")`` on one core, from wall time (the
``cpu`` column: this process's CPU time; they differ on a shared machine).

    python benchmarks/bench_jax_env.py [--num-envs 4096] [--sizes 16 128] [--steps 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts

import gymnasium as gym  # noqa: E402
import gymnax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import anymdp_gym  # noqa: E402, F401  (registers AnyMDP-v0)
from anymdp_gym import sample_task  # noqa: E402
from anymdp_gym.jax import AnyMDP  # noqa: E402
from bench_env import SEED_BASE, batched_throughput, table  # noqa: E402

N_ACTIONS = 5


def jax_throughput(env, params, num_envs: int, n_steps: int, batched: bool) -> tuple[float, float]:
    """``(compile seconds, steps/s)`` of ``num_envs`` copies of a gymnax ``env`` stepped ``n_steps``
    times in one jitted scan; ``params`` has a leading env axis when ``batched``."""
    p_axis = 0 if batched else None
    reset = jax.vmap(env.reset, in_axes=(0, p_axis))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, p_axis))
    n_actions = env.action_space(None if batched else params).n

    @jax.jit
    def run(key, state, params):  # params as an argument: closed over, 4 GB of tables become constants
        def body(state, key):
            k_act, k_step = jax.random.split(key)
            action = jax.random.randint(k_act, (num_envs,), 0, n_actions)
            _, state, reward, _, _ = step(jax.random.split(k_step, num_envs), state, action, params)
            return state, reward.sum()

        return jax.lax.scan(body, state, jax.random.split(key, n_steps))

    _, state = reset(jax.random.split(jax.random.key(0), num_envs), params)
    start = time.perf_counter()
    jax.block_until_ready(run(jax.random.key(1), state, params))
    compile_s = time.perf_counter() - start
    best = np.inf
    for k in range(3):
        start = time.perf_counter()
        jax.block_until_ready(run(jax.random.key(2 + k), state, params))
        best = min(best, time.perf_counter() - start)
    return compile_s, num_envs * n_steps / best


def anymdp_rows(size: int, num_envs: int, n_steps: int, distinct: int) -> list[dict]:
    """The AnyMDP rows at one size: its own task per env (``distinct`` tasks repeated to
    ``num_envs``), one shared task, and the Numba batched env on the same tasks."""
    start = time.perf_counter()
    tasks = [sample_task(size, N_ACTIONS, seed=SEED_BASE + k) for k in range(distinct)]
    tasks = [tasks[k % distinct] for k in range(num_envs)]
    sample_s = time.perf_counter() - start
    env = AnyMDP(size, N_ACTIONS)
    batch = env.params(tasks)
    table_mb = sum(x.nbytes for x in jax.tree.leaves(batch)) / 1e6
    rows = []
    compile_s, rate = jax_throughput(env, batch, num_envs, n_steps, batched=True)
    rows.append({"env": "AnyMDP (jax), a task per env", "states": size, "envs": num_envs, "tables MB": f"{table_mb:.0f}",
                 "compile s": f"{compile_s:.1f}", "M steps/s": rate / 1e6})
    del batch
    compile_s, rate = jax_throughput(env, env.params(tasks[0]), num_envs, n_steps, batched=False)
    rows.append({"env": "AnyMDP (jax), one task", "states": size, "envs": num_envs, "tables MB": "-",
                 "compile s": f"{compile_s:.1f}", "M steps/s": rate / 1e6})
    envs = gym.make_vec("AnyMDP-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", task=tasks[0])
    envs.reset(seed=0, options={"task": tasks})
    wall, cpu = batched_throughput(envs, n_steps)
    table_mb = sum(a.nbytes for a in envs.unwrapped._tables) / 1e6
    rows.append({"env": f"AnyMDP (numba, cpu {cpu / 1e6:.2f})", "states": size, "envs": num_envs,
                 "tables MB": f"{table_mb:.0f}", "compile s": "-", "M steps/s": wall / 1e6})
    envs.close()
    print(f"S={size}: sampled {distinct} tasks in {sample_s:.1f} s", flush=True)
    return rows


def gymnax_row(env_id: str, states: str, num_envs: int, n_steps: int, **kwargs) -> dict:
    env, params = gymnax.make(env_id, **kwargs)
    compile_s, rate = jax_throughput(env, params, num_envs, n_steps, batched=False)
    return {"env": f"{env_id} (gymnax)", "states": states, "envs": num_envs, "tables MB": "-",
            "compile s": f"{compile_s:.1f}", "M steps/s": rate / 1e6}


def measure(sizes: Sequence[int], num_envs: int, n_steps: int, distinct: int) -> list[dict]:
    rows = []
    for size in sizes:
        rows += anymdp_rows(size, num_envs, n_steps, distinct)
    rows.append(gymnax_row("DeepSea-bsuite", "16", num_envs, n_steps, size=4))
    rows.append(gymnax_row("FourRooms-misc", "104", num_envs, n_steps))
    rows.append(gymnax_row("CartPole-v1", "4 floats", num_envs, n_steps))
    return rows


def print_rows(rows: list[dict], title: str) -> None:
    header = list(rows[0])
    table(title, header, [[f"{r[k]:.2f}" if isinstance(r[k], float) else r[k] for k in header] for r in rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed call")
    parser.add_argument("--distinct-tasks", type=int, help="tasks sampled, repeated to --num-envs (default: all distinct)")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.device_kind} ({device.platform}), gymnax {version('gymnax')}", flush=True)
    rows = measure(args.sizes, args.num_envs, args.steps, args.distinct_tasks or args.num_envs)
    print_rows(rows, f"env steps per second under jit(vmap), {args.steps} steps per call (best of 3)")


if __name__ == "__main__":
    main()
