"""``omnirl-generate``: write (or verify) a sharded data set of labelled sequences.

Examples::

    omnirl-generate --out data/anymdp --n-states 128 --seq-len 524288 --num-sequences 4096 \\
        --num-shards 64 --seed 0                       # every shard, all local cores
    omnirl-generate --out data/anymdp ... --shard $SLURM_ARRAY_TASK_ID   # one shard per job
    omnirl-generate --out data/anymdp --verify         # re-hash every shard

Determinism: shard ``i`` holds the ids ``DatasetSpec.shard_ids(i)`` and its bytes depend only on
the generator config, the seed and those ids, not on ``--workers``, the machine or earlier runs.
Resuming: shards whose file and checksum are valid are skipped; ``.partial`` files of a killed
run are deleted and their shards redone. Bad arguments fail with one line and exit code 2 before
any work starts; ``--verify`` exits 1 when a shard is missing or bad.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from omnirl_jax.data import shards
from omnirl_jax.typed_config import read_mapping

CHUNK_STEPS = 8192
"""Steps per generator call: bounds a worker's memory to one chunk of its rows."""
WORKER_MEMORY = 256 << 20
"""Rough per-worker budget for the task tables of the sequences it generates together."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="omnirl-generate", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output directory (shards + manifest.json)")
    p.add_argument("--config", help="YAML file of GeneratorConfig fields (flags below override it)")
    p.add_argument("--n-states", type=int, help="observation ids per task (>= 8; 1: multi-armed bandits)")
    p.add_argument("--n-actions", type=int, help="actions per task")
    p.add_argument("--seq-len", type=int, help="steps per sequence")
    p.add_argument("--num-sequences", type=int, default=64, help="sequences in the whole data set (default 64)")
    p.add_argument("--num-shards", type=int, default=1, help="shards the data set is split into (default 1)")
    p.add_argument("--shard", type=int, help="write only this shard index (one job of an array); default: all")
    p.add_argument("--seed", type=int, default=0, help="data-set seed (default 0)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="generator processes (default: all local cores)")
    p.add_argument("--verify", action="store_true", help="only re-check the checksums of --out and report")
    return p.parse_args(argv)


def build_spec(args: argparse.Namespace) -> shards.DatasetSpec:
    """The data set the arguments describe, validated (one-line ``ValueError`` otherwise)."""
    fields = read_mapping(args.config) if args.config else {}
    for key in ("n_states", "n_actions", "seq_len"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    config = shards.generator_config(fields, f"--config {args.config}" if args.config else "generator config")
    spec = shards.DatasetSpec(config, args.seed, args.num_sequences, args.num_shards).validate()
    if args.shard is not None and not 0 <= args.shard < spec.num_shards:
        raise ValueError(f"--shard {args.shard} out of range [0, {spec.num_shards}) for --num-shards {spec.num_shards}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    return spec


def unit_rows(spec: shards.DatasetSpec, rows: int, workers: int) -> int:
    """Sequences one work unit generates together: enough units for every worker, within memory."""
    c = spec.config
    per_sequence = c.n_states * c.n_states * c.n_actions * 32 + CHUNK_STEPS * 16
    return max(1, min(64, math.ceil(rows / workers), WORKER_MEMORY // per_sequence))


def _partial(out: Path, index: int) -> Path:
    return out / f"{shards.shard_name(index)}.partial"


def plan(out: Path, spec: shards.DatasetSpec, indices) -> list[int]:
    """Shards still to write. Deletes leftovers of killed runs and shards failing their checksum;
    records a complete but unrecorded shard (killed between rename and manifest update)."""
    manifest = shards.init_manifest(out, spec)
    todo = []
    for index in indices:
        final, partial = out / shards.shard_name(index), _partial(out, index)
        partial.unlink(missing_ok=True)
        record = manifest["shards"].get(str(index))
        if final.exists():
            if record is not None and shards.sha256_file(final) == record["sha256"]:
                continue
            if record is None and _is_complete_shard_of(final, spec):
                with shards.ShardFile(final) as shard:
                    episodes = int(np.count_nonzero(shard["episode_end"]))
                shards.record_shard(out, index, shards.shard_record(
                    spec, index, shards.sha256_file(final), episodes, final.stat().st_size))
                continue
            print(f"omnirl-generate: shard {index} failed its checksum; redoing it", file=sys.stderr)
            final.unlink()
        if record is not None:
            shards.drop_shard(out, index)
        todo.append(index)
    return todo


def _is_complete_shard_of(path: Path, spec: shards.DatasetSpec) -> bool:
    try:
        return shards.read_header(path)["dataset"] == spec.fingerprint()
    except (shards.ShardError, KeyError, ValueError):
        return False


# --------------------------------------------------------------------------- worker processes
_progress: Optional[mp.Queue] = None


def _init_worker(progress: mp.Queue, parent_pid: int) -> None:
    """Pool initializer: the progress queue, and a watchdog that ends this worker when the
    parent dies (a SIGKILLed parent would otherwise leave idle workers blocked forever)."""
    global _progress
    _progress = progress

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _fill_unit(out: Path, spec: shards.DatasetSpec, index: int, rows: range) -> tuple[int, int]:
    return index, shards.fill_rows(_partial(out, index), spec, index, rows, CHUNK_STEPS, _progress.put)


def generate(out: Path, spec: shards.DatasetSpec, todo: list[int], workers: int) -> None:
    """Write the shards ``todo``: units of rows over ``workers`` processes, shard after shard, so
    shards complete (and survive a kill) in order; each is finished as soon as its rows are."""
    units = []
    for index in todo:
        n = len(spec.shard_ids(index))
        step = unit_rows(spec, n, workers)
        units += [(index, range(lo, min(lo + step, n))) for lo in range(0, n, step)]
    left = {index: sum(u[0] == index for u in units) for index in todo}
    episodes = dict.fromkeys(todo, 0)

    def start(index):
        if not _partial(out, index).exists():
            shards.create_shard(_partial(out, index), spec, index)

    def done(index, n_episodes):
        episodes[index] += n_episodes
        left[index] -= 1
        if left[index] == 0:
            final = out / shards.shard_name(index)
            digest = shards.finish_shard(_partial(out, index), final)
            shards.record_shard(out, index, shards.shard_record(spec, index, digest, episodes[index],
                                                                final.stat().st_size))
            bar.set_postfix(shards=f"{len(todo) - sum(v > 0 for v in left.values())}/{len(todo)}")

    total = sum(len(spec.shard_ids(i)) for i in todo) * spec.config.seq_len
    with tqdm(total=total, unit="step", unit_scale=True, dynamic_ncols=True, desc="omnirl-generate") as bar:
        if workers == 1:
            for index, rows in units:
                start(index)
                done(index, shards.fill_rows(_partial(out, index), spec, index, rows, CHUNK_STEPS, bar.update))
            return
        ctx = mp.get_context("spawn")  # safe whatever the parent holds (threads, JAX); numba caches on disk
        progress = ctx.Queue()
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                    initargs=(progress, os.getpid())) as pool:
            pending, next_unit = set(), 0
            while pending or next_unit < len(units):
                while len(pending) < 2 * workers and next_unit < len(units):
                    index, rows = units[next_unit]
                    start(index)
                    pending.add(pool.submit(_fill_unit, out, spec, index, rows))
                    next_unit += 1
                finished, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                _drain(progress, bar)
                for future in finished:
                    done(*future.result())
            _drain(progress, bar)


def _drain(progress: mp.Queue, bar) -> None:
    while True:
        try:
            bar.update(progress.get_nowait())
        except queue.Empty:
            return


def run_verify(out: Path) -> int:
    with tqdm(total=shards.load_manifest(out)["num_shards"], unit="shard", desc="verify", dynamic_ncols=True) as bar:
        report = shards.verify(out, bar.update)
    for index in report.missing:
        print(f"shard {index}: missing")
    for index, why in report.bad.items():
        print(f"shard {index}: BAD ({why})")
    n = len(report.valid) + len(report.missing) + len(report.bad)
    print(f"{out}: {len(report.valid)}/{n} shards valid, {len(report.missing)} missing, {len(report.bad)} bad")
    return 0 if report.ok else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.verify:
            return run_verify(args.out)
        spec = build_spec(args)
        args.out.mkdir(parents=True, exist_ok=True)
        indices = [args.shard] if args.shard is not None else list(range(spec.num_shards))
        todo = plan(args.out, spec, indices)
    except (ValueError, OSError) as e:  # ShardError is a ValueError
        print(f"omnirl-generate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if todo:
        rows = sum(len(spec.shard_ids(i)) for i in todo)
        workers = min(args.workers, rows)
        print(f"omnirl-generate: writing {len(todo)} shard(s) of {args.out} ({rows} sequences of "
              f"{spec.config.seq_len} steps, {workers} worker(s)); {len(indices) - len(todo)} already valid")
        generate(args.out, spec, todo, workers)
    print(f"{args.out}: {len(indices)} shard(s) complete ({len(todo)} written, {len(indices) - len(todo)} already valid)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
