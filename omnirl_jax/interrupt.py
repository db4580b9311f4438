"""Stopping a training run on SIGINT or SIGTERM without losing the steps since the last checkpoint.

Preemptible TPU and GPU machines send SIGTERM with seconds to spare; Ctrl-C sends SIGINT. While a
``StopRequest`` is active the first of either only asks the train loop to stop: it finishes the
optimiser step in flight, saves a checkpoint and raises ``Interrupted``, which ``omnirl-train``
reports in one line with the conventional exit status (128 + the signal's number). The first
signal also gives both signals back their system default action, so a second one ends the process
at once, even inside a long XLA call (a save it cuts short is never committed: saves are atomic,
the previous checkpoint stays). A signal that arrives while the main thread is inside a compiled
step is handled when the step returns. Off the main thread, where Python cannot set handlers,
signals keep the handlers they had.

Multi-host: a save is collective, so every host must stop at the same step whichever hosts got the
signal: ``requested`` all-gathers the hosts' flags (one int32 per host, each step); on a single host
it reads the flag and costs nothing.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A run stopped on a signal after saving its step; the message is one line."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"interrupted at step {step} by {signal.Signals(signum).name}; checkpoint saved; "
                         "run the same command to resume")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Context manager: SIGINT and SIGTERM ask to stop (module doc) while it is active."""

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        for s in SIGNALS:
            signal.signal(s, signal.SIG_DFL)

    def requested(self) -> int:
        """The signal that asks the run to stop, agreed by every host; 0 for none."""
        if jax.process_count() == 1:
            return self.signum
        return int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))
