"""A training run's directory: one trainer owns it at a time, and a start writes nothing in it
until the start is known to fit what is there.

* Ownership: ``train.lock``, held with ``fcntl.flock`` for the life of the run (on a multi-host run,
  by the primary process, which writes the logs and the config). Why flock: the kernel releases it
  when the process ends, however it ends (kill -9 included), so there is never a stale lock to
  clear by hand; the file holds the owner's pid and host for the one line a second trainer prints.
  A file system that cannot lock stops the run (``WorkdirError``): running unlocked is how two
  trainers clobber one workdir.
* History: each start writes its resolved config to ``config_history/NNN_stepS.yaml`` (start
  ``NNN``, from step ``S``; loadable with ``--config``), then ``config.yaml`` (the latest, read by
  ``omnirl-eval``), and says which keys changed since the last start. Why keep every start: a
  resume may change ``train.steps``, ``optim.lr`` or the loss weights, and keep-N checkpoints
  outlive several starts, so the history is how one tells the config that produced a checkpoint
  (the last start from a step below it). A ``config.yaml`` that no start wrote (a run from before
  the history, or an edit by hand) is kept there first.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

LOCK_FILE = "train.lock"
HISTORY_DIR = "config_history"


class WorkdirError(RuntimeError):
    """The workdir cannot be used; ``problem`` is one line."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"workdir {path}: {problem}")


class Workdir:
    """A run directory, created if need be and, with ``own``, locked until ``close``."""

    def __init__(self, path: str | Path, *, own: bool = True):
        self.path = Path(path)
        self._lock = None
        problem = writable_dir(self.path)
        if problem is not None:
            raise WorkdirError(self.path, problem)
        if own:
            self._claim()

    def _claim(self) -> None:
        lock_path = self.path / LOCK_FILE
        try:
            lock = open(lock_path, "a+")  # a+: the holder's line stays until we hold the lock
        except OSError as e:
            raise WorkdirError(self.path, f"cannot write {LOCK_FILE} ({e.strerror})") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "pid unknown: it is just starting"
            lock.close()
            raise WorkdirError(self.path, f"in use by another trainer ({holder}); "
                                          "wait for it to end or choose another workdir") from None
        except OSError as e:
            lock.close()
            raise WorkdirError(self.path, f"cannot lock {LOCK_FILE} ({e.strerror})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        self._lock = lock

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> "Workdir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def record_start(self, config: dict, start_step: int, say: Callable[[str], None],
                     resolve: Callable[[dict], dict] = dict) -> None:
        """Keeps ``config`` (a resolved config as a plain dict) as this start's history entry and
        as ``config.yaml``; call once the start is known to fit the workdir (module doc). The last
        start's ``config.yaml`` is compared through ``resolve`` (as it is, where that fails)."""
        history = self.path / HISTORY_DIR
        history.mkdir(exist_ok=True)
        config_path = self.path / "config.yaml"
        text = yaml.safe_dump(config, sort_keys=False)
        old = config_path.read_text() if config_path.is_file() else None
        entries = sorted(history.glob("*.yaml"))
        if old is not None and not (entries and entries[-1].read_text().endswith(old)):
            _write(history / f"{len(entries) + 1:03d}_found.yaml",
                   "# config.yaml found in the workdir, written by no start of the history\n" + old)
            entries = sorted(history.glob("*.yaml"))
        changes = _changes(_resolved(_parse(old), resolve), config) if old is not None else []
        when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        origin = f"resumed from step {start_step}" if start_step else "fresh"
        header = f"# start {len(entries) + 1}: {origin}, {when}, pid {os.getpid()} on {socket.gethostname()}\n"
        if changes:
            header += f"# changed since the last start: {', '.join(changes)}\n"
        _write(history / f"{len(entries) + 1:03d}_step{start_step}.yaml", header + text)
        _write(config_path, text)
        if changes:
            say(f"config changed since the last start: {', '.join(changes)} "
                f"(every start's config: {history})")


def writable_dir(path: Path) -> Optional[str]:
    """Creates directory ``path`` if need be; None when it can be written in, else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return "is a file, not a directory"
    except OSError as e:
        return f"cannot be created ({e.strerror})"
    return None if os.access(path, os.W_OK) else "is not writable"


def _write(path: Path, text: str) -> None:
    """Writes ``text`` aside, then renames it over ``path``: the file is whole or unchanged."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _resolved(old: Optional[dict], resolve: Callable[[dict], dict]) -> Optional[dict]:
    try:
        return None if old is None else resolve(old)
    except ValueError:
        return old


def _parse(text: str) -> Optional[dict]:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _changes(old: Optional[dict], new: dict) -> list[str]:
    """``key: old -> new`` for each dotted key that differs (``absent`` where a side lacks it)."""
    if old is None:
        return ["the last config.yaml was unreadable (kept in the history)"]
    before, after = _flat(old), _flat(new)
    return [f"{key}: {before.get(key, 'absent')} -> {after.get(key, 'absent')}"
            for key in dict.fromkeys([*before, *after])
            if before.get(key, "absent") != after.get(key, "absent")]
