"""Checkpoints of everything a resumed run needs to continue exactly where it stopped.

One checkpoint (an orbax step directory) holds the train state (parameters, optimiser state, step,
RNG, the recurrent state carried across segments) and the data loader's position (its JSON-able
``state()``). Saves are asynchronous and atomic (written to a temporary directory, then renamed),
so a run killed mid-save leaves the previous checkpoints intact. A checkpoint that cannot be read
stops the run with a one-line CheckpointError instead of silently starting over on top of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from omnirl_jax.config import CheckpointConfig


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message is one line."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _arrays(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype)}`` of a state tree or of a checkpoint's metadata tree; paths are
    the key names joined by '/', so both spell a leaf alike."""
    def name(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return {"/".join(name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def layout_mismatch(expected: Any, stored: Any) -> Optional[str]:
    """What differs between the arrays a config needs and those a checkpoint holds (the first
    difference and how many there are), or None when every path, shape and dtype agrees."""
    want, have = _arrays(expected), _arrays(stored)
    problems = [f"{p} is missing" for p in want if p not in have]
    problems += [f"{p} is not in the config's state" for p in have if p not in want]
    problems += [f"{p} is {have[p][0]} {have[p][1]} in the checkpoint, the config needs {want[p][0]} {want[p][1]}"
                 for p in want if p in have and want[p] != have[p]]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


class Checkpointer:
    """Saves and restores (train state, loader state) pairs under ``directory``."""

    def __init__(self, directory: str | Path, cfg: CheckpointConfig):
        self.directory = Path(directory).absolute()
        self.cfg = cfg
        if cfg.best_metric is None:
            keep = policies.LatestN(n=cfg.keep)
        else:
            # The newest checkpoint is always kept too: resuming needs it whatever its metric.
            best = policies.BestN(
                get_metric_fn=lambda metrics: metrics[cfg.best_metric],
                reverse=cfg.best_mode == "min",
                n=cfg.keep,
            )
            keep = policies.AnyPreservationPolicy([policies.LatestN(n=1), best])
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save,
            preservation_policy=keep,
            cleanup_tmp_directories=True,
            create=True,
        )
        try:
            # Handlers named up front, so a checkpoint's metadata is readable before a restore.
            handlers = {"state": ocp.StandardCheckpointHandler(), "loader": ocp.JsonCheckpointHandler()}
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        except Exception as e:
            raise CheckpointError(f"cannot open checkpoint directory {self.directory} ({_one_line(e)})") from None

    def restore(self, abstract_state: Any) -> Optional[tuple[Any, dict, int]]:
        """Returns (state, loader_state, step) of the configured or latest checkpoint, or None
        when the directory holds none (a fresh run).

        ``abstract_state`` is a tree of jax.ShapeDtypeStruct with shardings: the restored arrays
        are placed exactly like a freshly initialised state. The checkpoint's array layout is
        compared with it first, so a checkpoint of another config fails naming the first array
        that differs (and no read is left half done).
        """
        steps = sorted(self.manager.all_steps())
        step = self.cfg.restore_step
        if step is None:
            if not steps:
                return None
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (available: {steps or 'none'})"
            )
        where = self.directory / str(step)
        try:
            stored = self.manager.item_metadata(step)["state"]
            if stored is None:
                raise ValueError("no metadata of the train state")
        except Exception as e:
            raise CheckpointError(f"checkpoint {where} is unreadable ({_one_line(e)}); "
                                  "move it aside to resume from an earlier one") from None
        mismatch = layout_mismatch(abstract_state, stored)
        if mismatch is not None:
            raise CheckpointError(f"checkpoint {where} does not match the config: {mismatch}")
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), loader=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {where} is unreadable or does not match the config "
                f"({_one_line(e)}); move it aside to resume from an earlier one"
            ) from None
        return restored["state"], restored["loader"], step

    def save(self, step: int, state: Any, loader_state: dict, metrics: Optional[dict] = None) -> None:
        """Starts an (async) save; returns once device arrays are copied, so training can go on."""
        loader_state = json.loads(json.dumps(loader_state))  # JSON-able, and decoupled from the loader
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(loader_state)),
            metrics=metrics if self.cfg.best_metric is not None else None,
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def close(self) -> None:
        """Waits for pending saves to finish."""
        self.manager.wait_until_finished()
        self.manager.close()
