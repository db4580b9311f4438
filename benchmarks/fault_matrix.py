"""Fault matrix (issue 24): every fault that used to lose or corrupt a user's work, met on the cpu
config, with what the user saw and what it cost; then what checkpoint digests cost at paper size.

    python benchmarks/fault_matrix.py [--out DIR] [--steps 30] [--every 10] [--set KEY=VALUE ...]

Each training fault is met by ``omnirl-train --config configs/cpu.yaml`` (``train.steps=30``,
``checkpoint.every=10``, ``train.log_every=4`` so that resumes split logging windows), then the same
command runs again. A row gives the fault, the first line the user saw of it (paths shortened to
``W``), the steps lost (steps done before the fault that had to be trained again) and whether the
final parameters and the ``metrics.csv`` rows (the timing columns aside) equal an uninterrupted
run's, bit for bit. Faults are injected at fixed points, so rows are reproducible:

    python benchmarks/fault_matrix.py --inject FAULT -- ARGS...   (omnirl-train ARGS with FAULT)

``FAULT`` is ``ACTION:POINT:N``: ACTION ``kill`` (SIGKILL), ``term`` (SIGTERM) or ``int2`` (SIGINT
twice) to itself, or ``ctrlc`` (SIGINT to its process group, as a terminal's Ctrl-C), at POINT ``batch`` (when the N-th batch is drawn) or in the N-th save at ``write``
(arrays written, orbax not yet finalising), ``digest`` (``digest.json`` half written) or ``commit``
(digest written, the step not yet renamed into place). Tests (tests/test_faults.py) use the same
injection on a tiny config.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("steps_per_s", "tokens_per_s")
"""metrics.csv columns that measure the machine, not the run."""


# --------------------------------------------------------------------------- injected faults
class _CountingLoader:
    """The data loader, with ``action`` run when the ``n``-th batch is drawn."""

    def __init__(self, loader, n: int, action):
        self.loader, self.n, self.action, self.drawn = loader, n, action, 0

    def __enter__(self):
        self.loader.__enter__()
        return self

    def __exit__(self, *exc):
        return self.loader.__exit__(*exc)

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        if self.drawn == self.n:
            self.action()
        return next(self.loader)

    def state(self):
        return self.loader.state()

    def restore(self, state):
        self.loader.restore(state)


def _on_call(owner, name: str, n: int, before, after=None) -> None:
    """Wraps ``owner.name`` so that its ``n``-th call runs ``before(*args)`` first and ``after()`` after."""
    real, calls = getattr(owner, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and before is not None:
            before(*args)
        result = real(*args, **kwargs)
        if calls[0] == n and after is not None:
            after()
        return result

    setattr(owner, name, wrapped)


def inject(fault: str) -> None:
    """Arms ``fault`` (module doc) in this process, before ``omnirl_jax.cli.main`` runs."""
    import orbax.checkpoint as ocp

    from omnirl_jax import digest
    from omnirl_jax.data import loader

    action, point, n = fault.split(":")
    n = int(n)

    def send(sig):
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler runs on the main thread's next bytecode

    def ctrl_c():  # as a terminal sends it: to the whole process group, data workers included
        os.killpg(os.getpgid(0), signal.SIGINT)
        time.sleep(0.05)

    act = {"kill": lambda *_: send(signal.SIGKILL), "term": lambda *_: send(signal.SIGTERM),
           "int2": lambda *_: (send(signal.SIGINT), send(signal.SIGINT)), "ctrlc": lambda *_: ctrl_c()}[action]
    if point == "batch":
        make = loader.make_loader
        loader.make_loader = lambda *a, **k: _CountingLoader(make(*a, **k), n, act)
    elif point == "write":
        _on_call(ocp.StandardCheckpointHandler, "finalize", n, act)
    elif point == "digest":
        def half_written(directory, *_):
            (Path(directory) / (digest.DIGEST_FILE + ".partial")).write_text('{"algorithm": "crc32", "files": {"sta')
            act()
        _on_call(digest, "write_digest", n, half_written)
    elif point == "commit":
        _on_call(digest, "write_digest", n, None, act)
    else:
        raise ValueError(f"unknown fault point {point!r}")


# --------------------------------------------------------------------------- running and comparing
def cli_args(workdir: Path, args: list[str]) -> list[str]:
    """``omnirl-train``'s arguments for configs/cpu.yaml in ``workdir`` with overrides ``args``."""
    return ["--config", str(ROOT / "configs/cpu.yaml"), "--workdir", str(workdir), "--set", *args]


def train_command(workdir: Path, args: list[str], fault: str | None = None) -> list[str]:
    """The ``omnirl-train`` command of ``cli_args`` (with ``fault`` injected)."""
    cli = cli_args(workdir, args)
    if fault is None:
        return [sys.executable, "-m", "omnirl_jax.cli", *cli]
    return [sys.executable, str(Path(__file__).resolve()), "--inject", fault, "--", *cli]


def run(command: list[str]) -> subprocess.CompletedProcess:
    """Runs ``command`` in a process group of its own (a ``ctrlc`` fault signals its group)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, start_new_session=True)


def resumed_from(stdout: str) -> int:
    """The step a run's output says it resumed from (0 for a fresh start)."""
    for line in stdout.splitlines():
        if line.startswith("resuming from step "):
            return int(line.split()[3])
    return 0


def metric_rows(workdir: Path) -> list[dict]:
    with open(workdir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def final_state(workdir: Path, step: int) -> dict:
    """The train state (and loader position) saved at ``step``, as numpy arrays."""
    from omnirl_jax.checkpoint import Checkpointer
    from omnirl_jax.config import CheckpointConfig

    checkpointer = Checkpointer(workdir / "checkpoints", CheckpointConfig())
    try:
        return checkpointer.manager.restore(step)
    finally:
        checkpointer.close()


def same_params(a: Path, b: Path, step: int) -> bool:
    """Whether the parameters saved at ``step`` in workdirs ``a`` and ``b`` are equal bit for bit."""
    import jax
    import numpy as np

    x, y = (jax.tree.leaves(final_state(w, step)["state"]["params"]) for w in (a, b))
    return len(x) == len(y) and all(np.asarray(p).tobytes() == np.asarray(q).tobytes() for p, q in zip(x, y))


def flip_byte(step_dir: Path, offset: int = 900_000) -> Path:
    """Flips every bit of one byte of the step's largest array file (at ``offset``, or its middle
    if it is shorter, as the issue's report did) and returns the file."""
    target = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    at = offset if offset < len(data) else len(data) // 2
    data[at] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


# --------------------------------------------------------------------------- the matrix
def first_line(text: str, workdir: Path) -> str:
    """The first line of ``text`` that is a message to the user (not a progress bar)."""
    lines = [line for line in text.splitlines() if line.startswith(("omnirl-", "warning:", "resuming"))]
    return lines[0].replace(str(workdir), "W") if lines else "(nothing)"


def matrix(out: Path, args: list[str], steps: int, every: int) -> list[tuple]:
    """Each fault on its own copy of the run; returns rows (fault, seen, lost, params equal, rows equal)."""
    reference = out / "reference"
    done = run(train_command(reference, args))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = []

    def resume(fault: str, workdir: Path, steps_done: int, faulted: subprocess.CompletedProcess) -> None:
        again = run(train_command(workdir, args))
        assert again.returncode == 0, again.stderr[-2000:]
        if faulted.returncode < 0:  # killed: the user sees nothing, then the rerun
            seen = f"(killed by {signal.Signals(-faulted.returncode).name}) rerun: {first_line(again.stdout, workdir)}"
        else:
            seen = f"{first_line(faulted.stderr, workdir)} (exit {faulted.returncode})"
        rows.append((fault, seen, steps_done - resumed_from(again.stdout), same_params(reference, workdir, steps),
                     metric_rows(workdir) == metric_rows(reference)))
        print(f"  {fault}: done", flush=True)

    mid = steps - every // 2
    for fault, spec, steps_done in [
        (f"SIGTERM mid-run (step {mid})", f"term:batch:{mid}", mid),
        (f"Ctrl-C, data worker included (step {mid})", f"ctrlc:batch:{mid}", mid),
        (f"SIGINT twice (step {mid})", f"int2:batch:{mid}", mid - 1),
        (f"kill -9 mid-run (step {mid})", f"kill:batch:{mid + 1}", mid),
        (f"kill -9 in save {2 * every}: arrays written, not finalised", "kill:write:2", 2 * every),
        (f"kill -9 in save {2 * every}: digest half written", "kill:digest:2", 2 * every),
        (f"kill -9 in save {2 * every}: digest written, not committed", "kill:commit:2", 2 * every),
    ]:
        workdir = out / spec.replace(":", "-")
        resume(fault, workdir, steps_done, run(train_command(workdir, args, spec)))

    workdir = out / "flipped"
    shutil.copytree(reference, workdir)
    flip_byte(workdir / "checkpoints" / str(steps))
    again = run(train_command(workdir, args))
    assert again.returncode == 0, again.stderr[-2000:]
    rows.append(("flipped byte in the newest checkpoint", first_line(again.stdout, workdir),
                 steps - resumed_from(again.stdout), same_params(reference, workdir, steps),
                 metric_rows(workdir) == metric_rows(reference)))

    workdir = out / "two"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen(train_command(workdir, args), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    for line in first.stdout:  # it holds the lock once it says what it trains
        if line.startswith("training steps"):
            break
    second = run(train_command(workdir, args))
    first.stdout.read()
    assert first.wait() == 0 and second.returncode == 2
    rows.append(("second trainer on the same workdir", first_line(second.stderr, workdir), 0,
                 same_params(reference, workdir, steps), metric_rows(workdir) == metric_rows(reference)))

    for fault, change in [("resume with another model", "model.d_model=128"),
                          ("resume with another seed", "train.seed=5")]:
        workdir = out / change
        shutil.copytree(reference, workdir)
        rejected = run(train_command(workdir, [*args, change]))
        assert rejected.returncode == 2
        kept = (workdir / "config.yaml").read_bytes() == (reference / "config.yaml").read_bytes()
        rows.append((f"{fault} (--set {change})", first_line(rejected.stderr, workdir) + ("" if kept else " [config.yaml overwritten]"),
                     0, same_params(reference, workdir, steps), metric_rows(workdir) == metric_rows(reference)))

    file = out / "a-file"
    file.write_text("not a directory\n")
    refused = run(train_command(file, args))
    rows.append(("omnirl-train --workdir FILE", first_line(refused.stderr, out), "-", "-", "-"))
    started = time.perf_counter()
    refused = run([sys.executable, "-m", "omnirl_jax.eval.evaluate", "--checkpoint", str(reference), "--suite", "anymdp-16",
                   "--modes", "online", "--out", str(file)])
    rows.append((f"omnirl-eval --out FILE (fails after {time.perf_counter() - started:.1f} s)",
                 first_line(refused.stderr, out), "-", "-", "-"))

    from anymdp_gym import Task, sample_task

    task_file = out / "task.npz"
    sample_task(16, 5, seed=0).save(task_file)
    raw = task_file.read_bytes()
    for fault, data in [("Task.load of a truncated file", raw[: len(raw) // 2]),
                        ("Task.load of a file with a flipped bit", raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:])]:
        task_file.write_bytes(data)
        try:
            Task.load(task_file)
            seen = "(loaded)"
        except ValueError as e:
            seen = f"ValueError: {e}".replace(str(out), "W")
        rows.append((fault, seen, "-", "-", "-"))
    return rows


def digest_cost(out: Path) -> str:
    """Saves a checkpoint of configs/tpu.yaml's train state (model, optimiser, carried state of its
    global batch; random values, no training) and times its digest: written and checked."""
    import jax
    import numpy as np

    from omnirl_jax import digest, sharding
    from omnirl_jax.checkpoint import STEP_METADATA, Checkpointer
    from omnirl_jax.config import CheckpointConfig, MeshConfig, load_config
    from omnirl_jax.train import Setup

    cfg = load_config(str(ROOT / "configs/tpu.yaml"))
    cfg.mesh = MeshConfig(data=1, model=1)
    setup = Setup.create(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape, np.float32).astype(a.dtype)
                                                  if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape, a.dtype), a.sharding),
                         setup.abstract_state)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    checkpointer = Checkpointer(out / "paper", CheckpointConfig(async_save=False))
    started = time.perf_counter()
    checkpointer.save(1, state, {"processes": []})
    save_s = time.perf_counter() - started
    step_dir = out / "paper" / "1"
    started = time.perf_counter()
    n_bytes = digest.write_digest(step_dir, exclude=(STEP_METADATA,))
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    assert digest.check_digest(step_dir) is None
    check_s = time.perf_counter() - started
    started = time.perf_counter()
    checkpointer.restore(setup.abstract_state, warn=lambda _: None)
    restore_s = time.perf_counter() - started
    checkpointer.close()
    files = sum(1 for p in step_dir.rglob("*") if p.is_file())
    return (f"paper-size checkpoint (configs/tpu.yaml: {n_params / 1e6:.1f}M parameters, AdamW moments, carried "
            f"state of {cfg.train.batch_size} rows): {n_bytes / 1e9:.2f} GB in {files} files; CRC-32 digest written in "
            f"{write_s:.2f} s ({n_bytes / write_s / 1e9:.2f} GB/s), checked in {check_s:.2f} s "
            f"({n_bytes / check_s / 1e9:.2f} GB/s); for scale: orbax save (digest included) {save_s:.2f} s, "
            f"restore (check included) {restore_s:.2f} s; one core, files in the page cache")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--inject"]:
        fault, rest = argv[1], argv[3:]  # --inject FAULT -- ARGS
        inject(fault)
        from omnirl_jax import cli

        return cli.main(rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="directory for the runs (default: a temporary one, removed after)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], help="more overrides of configs/cpu.yaml")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="fault-matrix-"))
    overrides = [f"train.steps={args.steps}", f"checkpoint.every={args.every}", "train.log_every=4", *args.set]
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "jax-cache"))  # one compile for all runs
    try:
        print(f"fault matrix: configs/cpu.yaml with {' '.join(overrides)}", flush=True)
        rows = matrix(out, overrides, args.steps, args.every)
        print("\n| fault | what the user saw (first line) | steps lost | final params = uninterrupted | metrics rows = uninterrupted |")
        print("| --- | --- | --- | --- | --- |")
        for fault, seen, lost, params, metrics in rows:
            mark = lambda x: x if isinstance(x, str) else ("yes" if x else "NO")  # noqa: E731
            print(f"| {fault} | {seen} | {lost} | {mark(params)} | {mark(metrics)} |")
        print("\n" + digest_cost(out))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
