"""Checkpoints of everything a resumed run needs to continue exactly where it stopped.

One checkpoint (an orbax step directory) holds the train state (parameters, optimiser state, step,
RNG, the recurrent state carried across segments) and the data loader's position (its JSON-able
``state()``). Saves are asynchronous and atomic (written to a temporary directory, then renamed),
so a run killed mid-save leaves the previous checkpoints intact. A checkpoint that cannot be read
stops the run with a one-line CheckpointError instead of silently starting over on top of it.

Integrity: when every file of a step is written, and before orbax renames its temporary directory,
``digest.json`` (``omnirl_jax.digest``: size and CRC-32 of each file) is written into it, so a
step and its digest appear together; a kill at any point of a save leaves either the previous
steps alone or a step with its digest. A restore checks the digest first. Why a corrupt newest
step is set aside (renamed ``STEP.corrupt``, with a one-line warning naming the bad file) and the
newest intact one restored, rather than stopping: a preempted run is restarted by its scheduler
with the same command, and a stop would leave a pod idle until someone reads a log, for a loss of
at most ``checkpoint.every`` steps that a deterministic run recomputes bit for bit; the bad step is
kept for inspection, never trained on. A step named by ``checkpoint.restore_step`` is never
replaced by another: if it is corrupt the run stops. Not covered: ``_CHECKPOINT_METADATA``, which
orbax rewrites when it commits the step (a timestamp; orbax parses it, so damage there fails
loudly). Steps written before digests were kept are restored with a warning that they are
unverified.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from omnirl_jax import digest
from omnirl_jax.config import CheckpointConfig

STEP_METADATA = "_CHECKPOINT_METADATA"
"""orbax's step metadata file, rewritten when a step is committed (so outside its digest)."""
RETIRED = ("rng",)
"""Train-state entries that older checkpoints hold and the trainer no longer has (``rng``: the key
of dropout, which no config used): read, so such checkpoints restore, and dropped."""


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
    want = _arrays(expected)
    have = {path: leaf for path, leaf in _arrays(stored).items() if path.split("/")[0] not in RETIRED}
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
            # Always orbax's async checkpointer: only it calls back between writing a step and
            # committing it; ``async_save: false`` waits for each save instead.
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_digest),
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

    def _write_digest(self) -> None:
        """orbax's post-finalisation callback: every file of the step being saved is written (on
        every host: orbax waits at a barrier first) and its temporary directory not yet renamed."""
        if jax.process_index() != 0:
            return
        suffix = ocp.path.atomicity_types.TMP_DIR_SUFFIX
        pending = [p for p in self.directory.iterdir() if suffix in p.name]
        if len(pending) != 1:
            raise CheckpointError(f"cannot tell which step is being saved in {self.directory}: {sorted(p.name for p in pending)}")
        digest.write_digest(pending[0], exclude=(STEP_METADATA,))

    def restore(self, abstract_state: Any, *, warn: Callable[[str], None] = print,
                set_aside: bool = False) -> Optional[tuple[Any, dict, int]]:
        """Returns (state, loader_state, step) of the configured or the newest intact checkpoint,
        or None when the directory holds none (a fresh run).

        Each candidate's digest is checked first (module doc): a corrupt newest step is skipped
        with a one-line ``warn`` and, with ``set_aside`` (the trainer, which will save that step
        again), renamed ``STEP.corrupt``; a corrupt ``restore_step``, or no intact step at all,
        raises. ``abstract_state`` is a tree of jax.ShapeDtypeStruct with shardings: the restored
        arrays are placed exactly like a freshly initialised state. The checkpoint's array layout
        is compared with it first, so a checkpoint of another config fails naming the first array
        that differs (and no read is left half done).
        """
        steps = self.all_steps()
        step = self.cfg.restore_step
        if step is None:
            if not steps:
                return None
            step = self._newest_intact(steps, warn, set_aside)
        elif step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (available: {steps or 'none'})"
            )
        else:
            problem = self._check(step, warn)
            if problem is not None:
                raise CheckpointError(f"checkpoint {self.directory / str(step)} is corrupt: {problem}; "
                                      "set checkpoint.restore_step to an earlier step to resume from it")
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
        retired = [key for key in RETIRED if key in stored.keys()]
        target = abstract_state
        if retired:  # a mapping, so the retired entries can be read beside the state's
            target = {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)}
            sharding = jax.tree.leaves(abstract_state)[0].sharding
            target.update({key: jax.ShapeDtypeStruct(stored[key].shape, stored[key].dtype, sharding=sharding)
                           for key in retired})
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), loader=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {where} is unreadable or does not match the config "
                f"({_one_line(e)}); move it aside to resume from an earlier one"
            ) from None
        state = restored["state"]
        if retired:
            state = type(abstract_state)(**{key: value for key, value in state.items() if key not in RETIRED})
        return state, restored["loader"], step

    def _check(self, step: int, warn: Callable[[str], None]) -> Optional[str]:
        """What is wrong with step ``step``'s files, or None (a step without a digest is from
        before digests were kept: restorable, with a warning)."""
        where = self.directory / str(step)
        if not digest.has_digest(where):
            warn(f"warning: checkpoint {where} has no {digest.DIGEST_FILE} (saved before digests were kept): not verified")
            return None
        return digest.check_digest(where)

    def _newest_intact(self, steps: list[int], warn: Callable[[str], None], set_aside: bool) -> int:
        bad = {}
        for step in reversed(steps):
            problem = self._check(step, warn)
            if problem is None:
                break
            bad[step] = problem
        else:
            raise CheckpointError(f"no intact checkpoint in {self.directory} (newest: {next(iter(bad.values()))}); "
                                  "nothing was changed")
        fate = {bad_step: "skipped" for bad_step in bad}
        if set_aside and bad:
            if jax.process_count() > 1:  # every host has checked before the primary renames
                multihost_utils.sync_global_devices("omnirl-checkpoint-checked")
            if jax.process_index() == 0:
                for bad_step in bad:
                    where = self.directory / str(bad_step)
                    aside = next(name for n in itertools.count()
                                 if not (where.parent / (name := f"{bad_step}.corrupt{n or ''}")).exists())
                    where.rename(where.parent / aside)
                    fate[bad_step] = f"moved to {aside}"
            self.manager.reload()
        for bad_step, problem in bad.items():
            warn(f"warning: checkpoint {self.directory / str(bad_step)} is corrupt: {problem}; "
                 f"{fate[bad_step]}, using step {step}")
        return step

    def save(self, step: int, state: Any, loader_state: dict, metrics: Optional[dict] = None) -> None:
        """Starts an (async) save; returns once device arrays are copied, so training can go on
        (with ``async_save: false``, once the step is committed with its digest)."""
        loader_state = json.loads(json.dumps(loader_state))  # JSON-able, and decoupled from the loader
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(loader_state)),
            metrics=metrics if self.cfg.best_metric is not None else None,
        )
        if not self.cfg.async_save:
            self.manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def close(self) -> None:
        """Waits for pending saves to finish."""
        self.manager.wait_until_finished()
        self.manager.close()
