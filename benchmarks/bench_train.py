"""Training throughput and peak memory against total sequence length (segment-wise training).

Each sequence length runs in a fresh subprocess (peak RSS is per process), training a tiny model
segment by segment over one sequence per row, so the table shows that memory depends on the
segment length only. Batches are random schema batches made on the fly: this measures the
trainer, not the data generator.

    python benchmarks/bench_train.py [--lengths 4096 32768 131072 524288] [--segment-len 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def random_segment(rng, batch: int, segment_len: int, offset: int, n_states: int, n_actions: int) -> dict:
    """A schema batch with random contents; every ~20th step ends an episode (null action)."""
    import numpy as np

    from omnirl_jax.data.schema import ROW_FIELDS, STEP_FIELDS

    shape = (batch, segment_len + 1)
    obs = rng.integers(0, n_states, shape)
    action = rng.integers(0, n_actions, shape)
    action[rng.random(shape) < 0.05] = n_actions
    label = np.where(action == n_actions, n_actions, rng.integers(0, n_actions, shape))
    fields = {
        "obs": obs[:, :-1], "action": action[:, :-1], "label": label[:, :-1],
        "reward": rng.normal(size=shape)[:, :-1] * (action[:, :-1] != n_actions),
        "prompt": np.full(shape, 3)[:, :-1], "tag": rng.integers(0, 8, shape)[:, :-1], "next_obs": obs[:, 1:],
        "plan": np.full(shape, n_actions)[:, :-1],
    }
    batch_dict = {name: fields[name].astype(dtype) for name, dtype in STEP_FIELDS.items()}
    batch_dict["offset"] = np.full(batch, offset, ROW_FIELDS["offset"])
    batch_dict["reset"] = np.full(batch, offset == 0, ROW_FIELDS["reset"])
    return batch_dict


def time_training(cfg, n_segments: int, devices=None) -> dict:
    """Trains a fresh model of ``cfg`` over ``n_segments`` random segments (one sequence per row,
    offsets advancing), at most two steps in flight as in train.py, and times all but the first
    segment (compilation). The step is compiled ahead of time so XLA's memory plan of it is
    reported too (it exists on every backend, unlike device memory statistics). Shared with
    benchmarks/device_check.py."""
    import jax
    import numpy as np

    from omnirl_jax import sharding
    from omnirl_jax.train import Setup

    t = cfg.train
    setup = Setup.create(cfg, sharding.make_mesh(cfg.mesh, devices))
    state = setup.init_state()
    rng = np.random.default_rng(t.seed)

    def segment(i):
        batch = random_segment(rng, t.batch_size, t.segment_len, i * t.segment_len, cfg.data.generator.n_states, cfg.data.generator.n_actions)
        return sharding.put_batch(batch, setup.mesh)

    batch = segment(0)
    compile_start = time.perf_counter()
    train_step = setup.jit_train_step().lower(state, batch).compile()
    compile_s = time.perf_counter() - compile_start
    memory = train_step.memory_analysis()
    start, previous = None, None
    for i in range(n_segments):
        state, metrics = train_step(state, batch if i == 0 else segment(i))
        jax.block_until_ready(previous)  # as in train.py: at most two steps in flight
        previous = metrics
        if i == 0:  # exclude the first step from the timing
            jax.block_until_ready(metrics)
            start = time.perf_counter()
    loss = float(metrics["loss"])
    elapsed = time.perf_counter() - start
    timed = n_segments - 1
    return {
        "segments": n_segments,
        "compile_s": compile_s,
        "seconds": elapsed,
        "segments_per_s": timed / elapsed if timed else float("nan"),
        "tokens_per_s": timed * t.batch_size * t.segment_len * cfg.model.tokens_per_step / elapsed if timed else float("nan"),
        "final_loss": loss,
        "compiled_temp_bytes": None if memory is None else memory.temp_size_in_bytes,
        "compiled_total_bytes": None if memory is None else (
            memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
    }


def run_one(args) -> dict:
    """Trains over one sequence of ``args.child`` steps per row; returns the measurements."""
    import jax

    from omnirl_jax.config import Config, MeshConfig, ModelConfig, TrainConfig

    cfg = Config(
        model=ModelConfig(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, chunk_size=64, remat=True),
        train=TrainConfig(batch_size=args.batch_size, segment_len=args.segment_len, steps=args.child // args.segment_len),
        mesh=MeshConfig(data=1, model=1),
    )
    row = time_training(cfg, args.child // args.segment_len, jax.devices()[:1])
    return {
        "steps": args.child,
        "segments": row["segments"],
        "tokens_per_s": row["tokens_per_s"],
        "seconds": row["seconds"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": row["final_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768, 131072, 524288])
    parser.add_argument("--segment-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args)))
        return
    passthrough = [f"--segment-len={args.segment_len}", f"--batch-size={args.batch_size}", f"--d-model={args.d_model}",
                   f"--n-layers={args.n_layers}", f"--n-heads={args.n_heads}"]
    print(f"tiny GLA model d={args.d_model} layers={args.n_layers} heads={args.n_heads}, batch {args.batch_size}, "
          f"segment {args.segment_len} steps ({5 * args.segment_len} tokens), remat on, 1 CPU device")
    print(f"{'steps':>8} {'segments':>8} {'tokens':>10} {'seconds':>8} {'tokens/s':>9} {'peak RSS MB':>11} {'vs first':>8}")
    first = None
    for length in args.lengths:
        out = subprocess.run([sys.executable, __file__, f"--child={length}", *passthrough],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        first = first or row["peak_rss_mb"]
        print(f"{row['steps']:>8} {row['segments']:>8} {row['steps'] * 5 * args.batch_size:>10} {row['seconds']:>8.1f} "
              f"{row['tokens_per_s']:>9.0f} {row['peak_rss_mb']:>11.0f} {row['peak_rss_mb'] / first:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
