"""Segment batches for the trainer (``omnirl_jax.data.schema``), from shards or generated live.

Design:

* **Lockstep rows.** Batch ``n`` is segment ``p = n % P`` (``P = seq_len // segment_len``) of
  the sequence group ``g = n // P``; row ``r`` of group ``g`` plays the ``g * batch_size + r``-th
  sequence of the loader's stream (``batch_size``: the *global* batch). A row thus streams one
  sequence in order, segment after segment, so the trainer carries its recurrent state, and
  takes the next sequence when it ends (``reset`` True, ``offset`` 0). Every sequence has
  ``seq_len`` steps, so all rows switch together (as the reference trainer does); ``seq_len``
  must be a multiple of ``segment_len``.
* **Position = one integer.** Everything above is a pure function of ``(seed, n)``, so
  ``state()`` is ``{"batch": n}`` plus what must match on ``restore`` (seed, sizes, data set),
  and a resumed run yields exactly the batches it would have.
* **Rows per process.** A multi-process run gives each process's loader ``rows``, the slice of
  the global batch that its devices hold (``omnirl_jax.sharding.process_rows``: contiguous, in
  process order along the mesh's ``data`` axis, e.g. rows 0-15 on process 0 and 16-31 on process
  1 of a 32-row batch over 2 hosts); it yields only those rows, each the same sequence that row
  holds in a 1-process run. So the global batch depends on ``(seed, n)`` alone, never on the
  process count, and ``state()``, which names no rows, is the same on every process: a run
  resumes on any number of hosts.
* **Shards** (``source: shards``): the stream visits all sequences of the manifest once per
  epoch in a seeded permutation (``default_rng([seed, epoch])``); rows read their segment from
  memory-mapped shard files, so memory is one batch whatever the data set size.
* **Generate** (``source: generate``): the stream's ``k``-th sequence is sequence id ``k`` of
  ``SequenceGenerator(config, seed, ...)`` -- an endless stream. ``workers`` background processes
  (spawn; no JAX in them) each own a fixed slice of the rows and generate them segment by
  segment into their own bounded queue; batch ``n`` is assembled from every worker's piece of
  batch ``n``. Rows map to sequence ids by arithmetic, never first-come-first-served, so the
  batches do not depend on worker timing. ``workers = 0`` generates in the calling process.
* **Fresh buffers.** Every batch is new numpy arrays in the schema dtypes: ``jax.device_put``
  may alias a CPU buffer, so a yielded array is never written again.
* ``next_obs[t] = obs[t + 1]`` within the sequence, the sequence's ``last_obs`` at its end.
  (Generator's ``episode_end`` marks where ``next_obs`` is a reset; the schema has no field for
  it, so the loader does not pass it on.)
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import queue
import traceback
from pathlib import Path
from typing import Any, Optional

import numpy as np

from omnirl_jax.data import shards
from omnirl_jax.data.generate import SequenceGenerator
from omnirl_jax.data.schema import ROW_FIELDS, STEP_FIELDS

STATE_VERSION = 1
PREFETCH = 4
"""Batches each generator worker may run ahead (its queue bound)."""


class LoaderConfigError(ValueError):
    """A data config the loader cannot serve; one line naming the key."""


def _config_error(message: str) -> Exception:
    """The trainer's ``ConfigError`` when available (it reports those without a traceback)."""
    try:
        from omnirl_jax.typed_config import ConfigError
    except ImportError:  # typed_config needs PyYAML, which data generation alone does not
        return LoaderConfigError(message)
    return ConfigError(message)


def make_loader(data_cfg: Any, *, batch_size: int, segment_len: int, seed: int,
                rows: Optional[slice] = None) -> "SegmentLoader":
    """An iterator of schema batches ``[rows, segment_len]`` with ``state()``/``restore()``: rows
    ``rows`` (default all) of the global batch of ``batch_size`` rows (module doc).

    ``data_cfg`` has ``source`` ("generate" | "shards"), ``path``, ``workers`` and ``generator``
    (a ``GeneratorConfig``: the sequences' sizes, and their generation). Raises the trainer's
    ``ConfigError`` (one line) for a config it cannot serve.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("segment_len", segment_len, 1), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise _config_error(f"loader {name} must be an integer >= {low}, got {value!r}")
    rows = slice(0, batch_size) if rows is None else rows
    if rows.step not in (None, 1) or not 0 <= rows.start < rows.stop <= batch_size:
        raise _config_error(f"loader rows {rows.start}..{rows.stop} are not a contiguous part of the {batch_size}-row batch")
    if data_cfg.source not in ("generate", "shards"):
        raise _config_error(f"config key 'data.source': {data_cfg.source!r} is not one of ['generate', 'shards']")
    if data_cfg.generator.seq_len % segment_len:
        raise _config_error(f"config key 'data.generator.seq_len': {data_cfg.generator.seq_len} is not a multiple of "
                            f"train.segment_len={segment_len} (rows stream whole sequences in lockstep)")
    cls = ShardLoader if data_cfg.source == "shards" else GenerateLoader
    return cls(data_cfg, batch_size=batch_size, segment_len=segment_len, seed=seed, rows=rows)


class SegmentLoader:
    """Shared lockstep bookkeeping (module doc); subclasses fill the step fields of a batch."""

    source = ""

    def __init__(self, *, batch_size: int, segment_len: int, seq_len: int, seed: int, dataset: str, rows: slice):
        self.batch_size, self.segment_len, self.seq_len = int(batch_size), int(segment_len), int(seq_len)
        self.rows = slice(int(rows.start), int(rows.stop))
        """The global batch's rows this loader yields (``batch_size`` counts them all)."""
        self.seed = int(seed)
        self.dataset = dataset
        self.segments_per_sequence = self.seq_len // self.segment_len
        self.next_batch = 0

    def state(self) -> dict:
        """JSON-able position; ``restore`` of it continues with exactly the next batch."""
        return {"version": STATE_VERSION, "batch": self.next_batch, **self._identity()}

    def restore(self, state: dict) -> None:
        """Continue from ``state()`` of a loader with the same data, seed and shapes."""
        if state.get("version") != STATE_VERSION:
            raise _config_error(f"loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise _config_error(f"loader state was saved with {key}={state.get(key)!r}, this loader has {value!r}")
        self._seek(int(state["batch"]))

    def _identity(self) -> dict:
        return {"source": self.source, "seed": self.seed, "batch_size": self.batch_size,
                "segment_len": self.segment_len, "seq_len": self.seq_len, "dataset": self.dataset}

    def _seek(self, batch: int) -> None:
        self.next_batch = batch

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        n = self.next_batch
        group, segment = divmod(n, self.segments_per_sequence)
        n_rows = self.rows.stop - self.rows.start
        batch = {name: np.empty((n_rows, self.segment_len), dtype) for name, dtype in STEP_FIELDS.items()}
        self._fill(batch, group, segment)
        batch["offset"] = np.full(n_rows, segment * self.segment_len, ROW_FIELDS["offset"])
        batch["reset"] = np.full(n_rows, segment == 0, ROW_FIELDS["reset"])
        self.next_batch = n + 1
        return batch

    def _fill(self, batch: dict, group: int, segment: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release background resources (none here)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _put_rows(batch: dict, rows: slice, chunk: dict, after_last: np.ndarray) -> None:
    """Copy compact generator/shard arrays ``[rows, T]`` into the batch, converting dtypes;
    ``after_last`` is the observation that follows each row's segment (its last ``next_obs``)."""
    for name in STEP_FIELDS:
        if name != "next_obs":
            batch[name][rows] = chunk[name]
    batch["next_obs"][rows, :-1] = chunk["obs"][:, 1:]
    batch["next_obs"][rows, -1] = after_last


# --------------------------------------------------------------------------- shards
class ShardLoader(SegmentLoader):
    """Segments read from memory-mapped shards (``omnirl_jax.data.shards``), sequences shuffled
    per epoch. Only a complete shard set is served: the order depends on the set."""

    source = "shards"

    def __init__(self, data_cfg: Any, *, batch_size: int, segment_len: int, seed: int, rows: slice):
        if not data_cfg.path:
            raise _config_error("config key 'data.path': required when data.source is 'shards'")
        self.path = Path(data_cfg.path)
        try:
            manifest = shards.load_manifest(self.path)
        except shards.ShardError as e:
            raise _config_error(f"config key 'data.path': {e}") from None
        for key in ("n_states", "n_actions", "seq_len"):
            if manifest[key] != getattr(data_cfg.generator, key):
                raise _config_error(f"config key 'data.generator.{key}': {getattr(data_cfg.generator, key)} but the shards in "
                                    f"{self.path} have {key}={manifest[key]}")
        missing = [i for i in range(manifest["num_shards"]) if str(i) not in manifest["shards"]]
        if missing:
            raise _config_error(f"config key 'data.path': {self.path} is incomplete ({len(missing)} of "
                                f"{manifest['num_shards']} shards missing, e.g. {missing[0]}); finish it with omnirl-generate")
        super().__init__(batch_size=batch_size, segment_len=segment_len, seq_len=manifest["seq_len"], seed=seed,
                         dataset=manifest["dataset"], rows=rows)
        self._records = [manifest["shards"][str(i)] for i in range(manifest["num_shards"])]
        self._starts = np.cumsum([0] + [r["num_sequences"] for r in self._records])
        self.num_sequences = int(self._starts[-1])
        self._files: dict[int, Any] = {}
        self._perm: Optional[tuple[int, np.ndarray]] = None

    def _sequence(self, k: int) -> tuple[Any, int]:
        """(shard file, row) of the stream's ``k``-th sequence."""
        epoch, i = divmod(k, self.num_sequences)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences))
        index = int(self._perm[1][i])
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        if shard not in self._files:
            self._files[shard] = shards.ShardFile(self.path / self._records[shard]["file"])
        return self._files[shard], index - int(self._starts[shard])

    def _fill(self, batch: dict, group: int, segment: int) -> None:
        t0, t1 = segment * self.segment_len, (segment + 1) * self.segment_len
        for b, r in enumerate(range(self.rows.start, self.rows.stop)):
            shard, row = self._sequence(group * self.batch_size + r)
            chunk = {name: shard[name][row:row + 1, t0:t1] for name in STEP_FIELDS if name != "next_obs"}
            after = shard["obs"][row, t1] if t1 < self.seq_len else shard["last_obs"][row]
            _put_rows(batch, slice(b, b + 1), chunk, after)

    def close(self) -> None:
        self._files.clear()


# --------------------------------------------------------------------------- generate
def _worker_rows(rows: slice, workers: int) -> list[slice]:
    """The global batch's row slices of each worker, splitting ``rows``: contiguous, sizes
    differing by at most one."""
    n = rows.stop - rows.start
    return [slice(rows.start + w * n // workers, rows.start + (w + 1) * n // workers) for w in range(workers)]


def _segments(config, seed: int, batch_size: int, rows: slice, segment_len: int, start_batch: int):
    """Endless ``(n, chunk, after_last)`` for rows ``rows`` from batch ``start_batch`` on.

    Group ``g``'s row ``b`` is sequence id ``g * batch_size + b``. A start inside a group replays
    that group's earlier segments (generation is sequential) and drops them.
    """
    per_sequence = config.seq_len // segment_len
    group, skip = divmod(start_batch, per_sequence)
    while True:
        generator = SequenceGenerator(config, seed, range(group * batch_size + rows.start, group * batch_size + rows.stop))
        for segment in range(per_sequence):
            chunk = generator.run(segment_len)
            if segment >= skip:
                after = generator.last_obs
                yield group * per_sequence + segment, {k: v for k, v in chunk.items() if k in STEP_FIELDS}, after
        group, skip = group + 1, 0


def _worker_main(config, seed, batch_size, rows, segment_len, start_batch, out: mp.Queue, parent_pid: int) -> None:
    """Background generator process: fills its queue until the parent goes away or it is stopped."""
    try:
        for item in _segments(config, seed, batch_size, rows, segment_len, start_batch):
            while True:
                if os.getppid() != parent_pid:
                    # Nobody will read what the queue still buffers; exit without flushing it
                    # (its feeder thread would otherwise block the exit forever on a full pipe).
                    out.cancel_join_thread()
                    return
                try:
                    out.put(item, timeout=1.0)
                    break
                except queue.Full:
                    continue
    except BaseException:  # report, so the trainer fails with the cause instead of a hang
        out.put(("error", traceback.format_exc(), None))


class GenerateLoader(SegmentLoader):
    """Sequences generated on the fly, endless (module doc)."""

    source = "generate"

    def __init__(self, data_cfg: Any, *, batch_size: int, segment_len: int, seed: int, rows: slice):
        self._procs, self._queues, self._local = [], [], None  # before any raise: __del__ closes them
        try:
            self.config = data_cfg.generator.validate()
        except ValueError as e:
            raise _config_error(f"config key 'data.generator': {e}") from None
        if not isinstance(data_cfg.workers, int) or data_cfg.workers < 0:
            raise _config_error(f"config key 'data.workers': must be >= 0, got {data_cfg.workers!r}")
        fingerprint = hashlib.sha256(json.dumps(self.config.identity(), sort_keys=True).encode()).hexdigest()
        super().__init__(batch_size=batch_size, segment_len=segment_len, seq_len=self.config.seq_len, seed=seed,
                         dataset=f"generate:{fingerprint}", rows=rows)
        self.workers = min(data_cfg.workers, rows.stop - rows.start)

    def _start(self) -> None:
        """Start the producers at ``next_batch`` (lazily, so ``restore`` first costs nothing)."""
        if self.workers == 0:
            self._local = _segments(self.config, self.seed, self.batch_size, self.rows, self.segment_len,
                                    self.next_batch)
            return
        ctx = mp.get_context("spawn")  # the trainer has JAX loaded: never fork it
        for rows in _worker_rows(self.rows, self.workers):
            q = ctx.Queue(maxsize=PREFETCH)
            p = ctx.Process(target=_worker_main, daemon=True, name=f"omnirl-data-{rows.start}",
                            args=(self.config, self.seed, self.batch_size, rows, self.segment_len, self.next_batch,
                                  q, os.getpid()))
            p.start()
            self._procs.append(p)
            self._queues.append(q)

    def _receive(self, w: int, n: int):
        """Worker ``w``'s piece of batch ``n``; raises if the worker failed or died."""
        while True:
            try:
                item = self._queues[w].get(timeout=5.0)
                break
            except queue.Empty:
                if not self._procs[w].is_alive():
                    raise RuntimeError(f"data worker {w} exited with code {self._procs[w].exitcode}") from None
        if item[0] == "error":
            raise RuntimeError(f"data worker {w} failed:\n{item[1]}")
        if item[0] != n:
            raise RuntimeError(f"data worker {w} sent batch {item[0]}, expected {n}")
        return item

    def _fill(self, batch: dict, group: int, segment: int) -> None:
        if not self._procs and self._local is None:
            self._start()
        n = group * self.segments_per_sequence + segment
        if self._local is not None:
            _, chunk, after = next(self._local)
            _put_rows(batch, slice(None), chunk, after)
            return
        for w, rows in enumerate(_worker_rows(self.rows, self.workers)):
            _, chunk, after = self._receive(w, n)
            _put_rows(batch, slice(rows.start - self.rows.start, rows.stop - self.rows.start), chunk, after)

    def _seek(self, batch: int) -> None:
        self.close()
        super()._seek(batch)

    def close(self) -> None:
        """Stop the background workers (restarted lazily by the next batch)."""
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            p.join()
        for q in self._queues:
            q.close()
            q.cancel_join_thread()
        self._procs, self._queues, self._local = [], [], None  # _local: the in-process stream (workers 0)

    def __del__(self):
        self.close()
