"""Shard files and the manifest of a generated data set (numpy only, made for ``np.memmap``).

A data set is ``num_sequences`` sequences (ids ``0..num_sequences-1``) of ``seq_len`` steps, made
by ``SequenceGenerator(config, seed, ids)`` and split into ``num_shards`` shards of contiguous id
ranges (``DatasetSpec.shard_ids``), so N machines or a job array write disjoint shards, each a
function of ``(seed, its ids)`` alone.

Shard file (``shard-00003.bin``; little-endian)::

    bytes 0..7      magic b"OMNIRLSH"
    bytes 8..15     uint64: length H of the JSON header
    bytes 16..16+H  JSON header: version, dataset fingerprint, shard, first_id, num_sequences,
                    seq_len, fields {name: {dtype, shape, offset}}
    data region, from the first multiple of 4096 after the header (field offsets count from
    there): one C-order block per field, each starting at a multiple of 4096 bytes:
      the generator's STEP_DTYPES fields, [num_sequences, seq_len] each;
      sequence_id int64 [num_sequences]; last_obs (obs dtype) [num_sequences].

Why this layout: the loader reads one sequence's segment per field, which here is one contiguous
range, and memory-maps any field without touching the others; the header depends on the shape
alone, so the same (seed, ids) gives a byte-identical file (checksums compare across machines).
A time chunk ``[rows, t0:t1]`` is a strided write, cheap through the page cache.

Atomicity: a shard is created at its full size as ``shard-00003.bin.partial``, filled chunk by
chunk with ``pwrite`` (several processes may fill disjoint rows), fsynced, hashed, renamed to its
final name and the directory fsynced. A file under a final name is therefore always complete; a
kill leaves at most a ``.partial`` file, which a re-run deletes and redoes.

``manifest.json`` holds the data set (generator config, seed, counts, shard id ranges) and one
record per complete shard (file, sequences, steps, episodes, bytes, sha256). It is rewritten
atomically under an ``flock`` so concurrent writers of one directory do not lose records.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from omnirl_jax.data.generate import STEP_DTYPES, GeneratorConfig, SequenceGenerator

MAGIC = b"OMNIRLSH"
VERSION = 2
"""Shard and manifest format version (2: the ``plan`` field); a reader refuses any other."""
ALIGN = 4096
MANIFEST = "manifest.json"
FORMAT = "omnirl-shards"
SEQUENCE_FIELDS = {"sequence_id": np.dtype(np.int64), "last_obs": STEP_DTYPES["obs"]}
"""Per-sequence fields of a shard, each ``[num_sequences]``."""


class ShardError(ValueError):
    """A shard directory, file or manifest is unusable; the message is one line."""


def generator_config(fields: Mapping, where: str = "generator config") -> GeneratorConfig:
    """A validated ``GeneratorConfig`` from a plain mapping (YAML, JSON, ``data.generator``).

    Unknown keys fail with one line (a typo must not silently fall back to a default); lists
    become tuples where the field's default is a tuple, so configs round-trip through JSON.
    """
    defaults = {f.name: f for f in dataclasses.fields(GeneratorConfig)}
    kwargs = {}
    for key, value in fields.items():
        if key not in defaults:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(defaults)})")
        default = defaults[key].default
        kwargs[key] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    return GeneratorConfig(**kwargs).validate()


def config_dict(config: GeneratorConfig) -> dict:
    """JSON form of a config (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a data set is: its generator config, seed, size and split into shards."""

    config: GeneratorConfig
    seed: int
    num_sequences: int
    num_shards: int

    def validate(self) -> "DatasetSpec":
        """One-line ``ValueError`` for a bad size or split (the config is validated too)."""
        self.config.validate()
        for name in ("seed", "num_sequences", "num_shards"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'seed' else 1}, got {value!r}")
        if self.num_shards > self.num_sequences:
            raise ValueError(f"num_shards={self.num_shards} exceeds num_sequences={self.num_sequences} (empty shards)")
        return self

    def shard_ids(self, index: int) -> range:
        """Sequence ids of shard ``index``: a contiguous range, sizes differing by at most one."""
        if not 0 <= index < self.num_shards:
            raise ValueError(f"shard index {index} out of range [0, {self.num_shards})")
        lo = index * self.num_sequences // self.num_shards
        return range(lo, (index + 1) * self.num_sequences // self.num_shards)

    def describe(self) -> dict:
        """The manifest's data-set part (everything but the shard records)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "seed": self.seed,
            "num_sequences": self.num_sequences,
            "num_shards": self.num_shards,
            "seq_len": self.config.seq_len,
            "n_states": self.config.n_states,
            "n_actions": self.config.n_actions,
            "sequences_per_shard": [len(self.shard_ids(i)) for i in range(self.num_shards)],
            "fields": {name: dtype.str for name, dtype in {**STEP_DTYPES, **SEQUENCE_FIELDS}.items()},
            "generator": config_dict(self.config),
        }

    def fingerprint(self) -> str:
        """sha256 of ``describe()``: shards carry it, so a directory never mixes two data sets."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_manifest(cls, manifest: dict) -> "DatasetSpec":
        return cls(generator_config(manifest["generator"], "manifest generator"), manifest["seed"],
                   manifest["num_sequences"], manifest["num_shards"])


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


# --------------------------------------------------------------------------- shard files
def _layout(num_sequences: int, seq_len: int) -> tuple[dict, int]:
    """Field table ``{name: {dtype, shape, offset}}`` (offsets relative to the data start) and the
    data size in bytes."""
    fields, pos = {}, 0
    blocks = [(name, dtype, [num_sequences, seq_len]) for name, dtype in STEP_DTYPES.items()]
    blocks += [(name, dtype, [num_sequences]) for name, dtype in SEQUENCE_FIELDS.items()]
    for name, dtype, shape in blocks:
        fields[name] = {"dtype": dtype.newbyteorder("<").str, "shape": shape, "offset": pos}
        pos += -(-int(np.prod(shape)) * dtype.itemsize // ALIGN) * ALIGN
    return fields, pos


def _data_start(header_len: int) -> int:
    """Field offsets in the header count from here: the first ``ALIGN`` boundary after it."""
    return -(-(16 + header_len) // ALIGN) * ALIGN


def create_shard(path: Path, spec: DatasetSpec, index: int) -> None:
    """Create ``path`` at its full size with the header written and ``sequence_id`` filled."""
    ids = spec.shard_ids(index)
    fields, data_bytes = _layout(len(ids), spec.config.seq_len)
    header = {"version": VERSION, "dataset": spec.fingerprint(), "shard": index, "first_id": ids.start,
              "num_sequences": len(ids), "seq_len": spec.config.seq_len, "fields": fields}
    text = json.dumps(header, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(MAGIC + np.uint64(len(text)).tobytes() + text)
        f.truncate(_data_start(len(text)) + data_bytes)
    fd = os.open(path, os.O_WRONLY)
    try:
        with ShardFile(path) as shard:
            _write_rows(fd, shard, "sequence_id", range(len(ids)), 0, np.asarray(ids))
    finally:
        os.close(fd)


class ShardFile:
    """One shard opened read-only as memmaps: ``shard["obs"]`` is ``[num_sequences, seq_len]``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != MAGIC:
                raise ShardError(f"{self.path}: not a shard file (bad magic)")
            size = int(np.frombuffer(head[8:], "<u8")[0])
            try:
                self.header = json.loads(f.read(size))
            except ValueError:
                raise ShardError(f"{self.path}: shard header is not valid JSON") from None
        if self.header.get("version") != VERSION:
            raise ShardError(f"{self.path}: shard version {self.header.get('version')!r}, expected {VERSION}")
        fields = self.header["fields"]
        self.offsets = {name: _data_start(size) + f["offset"] for name, f in fields.items()}
        end = max(self.offsets[name] + int(np.prod(f["shape"])) * np.dtype(f["dtype"]).itemsize
                  for name, f in fields.items())
        if self.path.stat().st_size < end:
            raise ShardError(f"{self.path}: truncated ({self.path.stat().st_size} bytes, header needs {end})")
        self.fields = {
            name: np.memmap(self.path, dtype=np.dtype(f["dtype"]), mode="r", offset=self.offsets[name],
                            shape=tuple(f["shape"]))
            for name, f in fields.items()
        }

    def __getitem__(self, name: str) -> np.ndarray:
        return self.fields[name]

    def close(self) -> None:
        self.fields = {}  # memmaps unmap when collected

    def __enter__(self) -> "ShardFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_rows(fd: int, shard: ShardFile, name: str, rows: range, t0: int, values: np.ndarray) -> None:
    """Write ``values`` ``[len(rows), n]`` at ``[rows, t0:t0 + n]`` of field ``name`` (``[len(rows)]``
    at ``[rows]`` for a per-sequence field). ``pwrite`` into the page cache: cheaper than faulting
    in fresh memmap pages, and processes writing disjoint rows never touch the same bytes."""
    field = shard.header["fields"][name]
    dtype = np.dtype(field["dtype"])
    values = np.ascontiguousarray(values, dtype)
    if len(field["shape"]) == 1:
        os.pwrite(fd, values, shard.offsets[name] + rows.start * dtype.itemsize)
        return
    row_bytes = field["shape"][1] * dtype.itemsize
    for j, r in enumerate(rows):
        os.pwrite(fd, values[j], shard.offsets[name] + r * row_bytes + t0 * dtype.itemsize)


def fill_rows(path: Path, spec: DatasetSpec, index: int, rows: range, chunk_steps: int,
              progress: Optional[Callable[[int], None]] = None) -> int:
    """Generate rows ``rows`` of shard ``index`` into the partial file ``path``, chunk by chunk.

    Memory is one chunk of ``len(rows)`` sequences. Calls ``progress(steps)`` after each chunk;
    returns the number of episodes ended in these rows (for the manifest counts).
    """
    ids = spec.shard_ids(index)
    seq_len = spec.config.seq_len
    generator = SequenceGenerator(spec.config, spec.seed, [ids[r] for r in rows])
    episodes = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        with ShardFile(path) as shard:
            for t0 in range(0, seq_len, chunk_steps):
                chunk = generator.run(min(chunk_steps, seq_len - t0))
                for name, values in chunk.items():
                    _write_rows(fd, shard, name, rows, t0, values)
                episodes += int(np.count_nonzero(chunk["episode_end"]))
                if progress is not None:
                    progress(chunk["obs"].size)
            _write_rows(fd, shard, "last_obs", rows, 0, generator.last_obs)
    finally:
        os.close(fd)
    return episodes


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_shard(partial: Path, final: Path) -> str:
    """fsync, hash and atomically rename a filled partial shard; returns its sha256."""
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    digest = sha256_file(partial)
    os.replace(partial, final)
    _fsync_dir(final.parent)
    return digest


def read_header(path: Path) -> dict:
    with ShardFile(path) as shard:
        return shard.header


# --------------------------------------------------------------------------- manifest
def load_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ShardError(f"{out_dir} holds no {MANIFEST} (not a shard directory)") from None
    except ValueError:
        raise ShardError(f"{path} is not valid JSON") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ShardError(f"{path}: not an {FORMAT} v{VERSION} manifest")
    return manifest


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _update_manifest(out_dir: Path, update: Callable[[Optional[dict]], dict]) -> dict:
    """Read-modify-write ``manifest.json`` under an exclusive ``flock`` (concurrent writers)."""
    out_dir = Path(out_dir)
    with open(out_dir / "manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = load_manifest(out_dir) if (out_dir / MANIFEST).exists() else None
            manifest = update(current)
            if manifest is not current:
                _write_json_atomic(out_dir / MANIFEST, manifest)
            return manifest
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def init_manifest(out_dir: Path, spec: DatasetSpec) -> dict:
    """Create the manifest of ``spec`` in ``out_dir``, or check that the existing one matches."""

    def update(current):
        if current is None:
            return {**spec.describe(), "dataset": spec.fingerprint(), "shards": {}}
        if current.get("dataset") != spec.fingerprint():
            old = {k: current.get(k) for k in ("seed", "num_sequences", "num_shards", "seq_len", "n_states")}
            raise ShardError(f"{out_dir} holds a different data set ({old}, or another generator config); "
                             "use a new --out directory")
        return current

    return _update_manifest(out_dir, update)


def record_shard(out_dir: Path, index: int, record: dict) -> None:
    """Add one complete shard's record (file, counts, sha256) to the manifest."""

    def update(current):
        return {**current, "shards": {**current["shards"], str(index): record}}

    _update_manifest(out_dir, update)


def drop_shard(out_dir: Path, index: int) -> None:
    """Remove a shard's record (its file failed its checksum and will be redone)."""

    def update(current):
        return {**current, "shards": {k: v for k, v in current["shards"].items() if k != str(index)}}

    _update_manifest(out_dir, update)


def shard_record(spec: DatasetSpec, index: int, sha256: str, episodes: int, nbytes: int) -> dict:
    n = len(spec.shard_ids(index))
    return {"file": shard_name(index), "first_id": spec.shard_ids(index).start, "num_sequences": n,
            "num_steps": n * spec.config.seq_len, "num_episodes": episodes, "bytes": nbytes, "sha256": sha256}


@dataclasses.dataclass
class VerifyReport:
    """Outcome of ``verify``: shard indices that are valid, missing, or bad (with why)."""

    valid: list
    missing: list
    bad: dict

    @property
    def ok(self) -> bool:
        return not self.missing and not self.bad


def verify(out_dir: Path, progress: Optional[Callable[[int], None]] = None) -> VerifyReport:
    """Re-hash every recorded shard and check its header and sequence ids against the manifest.

    A shard is valid when its sha256 matches its record and it holds exactly its id range, so a
    valid, complete set has every sequence once.
    """
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    spec = DatasetSpec.from_manifest(manifest)
    valid, missing, bad = [], [], {}
    for index in range(spec.num_shards):
        record = manifest["shards"].get(str(index))
        path = out_dir / shard_name(index)
        if record is None or not path.exists():
            missing.append(index)
            continue
        if sha256_file(path) != record["sha256"]:
            bad[index] = "sha256 mismatch"
        else:
            with ShardFile(path) as shard:
                if shard.header["dataset"] != manifest["dataset"]:
                    bad[index] = "belongs to another data set"
                elif not np.array_equal(shard["sequence_id"], np.asarray(spec.shard_ids(index))):
                    bad[index] = "sequence ids differ from the shard's id range"
                else:
                    valid.append(index)
        if progress is not None:
            progress(1)
    return VerifyReport(valid, missing, bad)
