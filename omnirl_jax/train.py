"""Segment-wise (truncated BPTT) training of OmniRL on a device mesh.

Each batch is one segment of ``segment_len`` steps per row. The train step zeroes the recurrent
state of rows that start a new sequence, runs the model from the carried state, back-propagates
within the segment only, and carries the final state (without gradient) to the next segment. So
memory depends on the segment length, never on the sequence length.

``train`` takes any iterator of schema batches with ``state()``/``restore()`` (the data loader),
so the loop is independent of where data comes from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from omnirl_jax import sharding
from omnirl_jax.checkpoint import CheckpointError, Checkpointer
from omnirl_jax.config import Config, OptimConfig, resolve
from omnirl_jax.interrupt import Interrupted, StopRequest
from omnirl_jax.losses import compute_losses
from omnirl_jax.metrics import MetricsWriter
from omnirl_jax.model import OmniRL, reset_carry
from omnirl_jax.typed_config import ConfigError, to_dict
from omnirl_jax.workdir import Workdir

STEP_METRICS = ("loss", "policy_loss", "next_state_loss", "reward_loss", "policy_accuracy", "grad_norm")
"""Metrics every train step returns."""
RATE_METRICS = ("lr", "steps_per_s", "tokens_per_s")
"""Metrics of each logged window of steps, beside the steps' means."""


def step_metrics(cfg: Config) -> tuple[str, ...]:
    """The metrics the train step of ``cfg`` returns (and that checkpoint.best_metric may name)."""
    return STEP_METRICS + (("behaviour_loss",) if cfg.loss.behaviour > 0 else ())


class BatchSource(Protocol):
    """What the train loop needs from a data loader (omnirl_jax.data.loader satisfies it)."""

    def __next__(self) -> dict: ...
    def state(self) -> dict: ...
    def restore(self, state: dict) -> None: ...


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    """Segment batches consumed (optimiser steps x accumulate)."""
    params: Any
    opt_state: Any
    carry: Any
    """The model's ``Carry``, [global batch, ...] each part, carried across segments."""


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``lr``, then cosine / linear decay to ``lr * end_lr_factor`` (or constant)."""
    warmup = min(cfg.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.end_lr_factor
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_factor)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW (decay on matrices only) with global-norm clipping and optional accumulation."""
    optimizer = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(
            make_schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
        ),
    )
    if cfg.accumulate > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=cfg.accumulate)
    return optimizer


def build_model(cfg: Config, rngs: nnx.Rngs) -> OmniRL:
    return OmniRL(cfg.model, n_states=cfg.data.generator.n_states, n_actions=cfg.data.generator.n_actions,
                  behaviour_head=cfg.loss.behaviour > 0, rngs=rngs)


def make_loss_fn(graphdef, cfg: Config) -> Callable:
    """(params, carry, batch) -> (loss, (metrics, final carry)); carry already reset."""

    def loss_fn(params, carry, batch):
        model = nnx.merge(graphdef, params)
        outputs, carry = model(batch, carry)
        loss, metrics = compute_losses(outputs, batch, cfg.loss, cfg.data.generator.n_actions)
        return loss, (metrics, carry)

    return loss_fn


def make_train_step(graphdef, optimizer: optax.GradientTransformation, cfg: Config) -> Callable:
    """(state, batch) -> (state, metrics): one segment of truncated BPTT and an optimiser update."""
    grad_fn = jax.value_and_grad(make_loss_fn(graphdef, cfg), has_aux=True)

    def train_step(state: TrainState, batch: dict):
        if cfg.loss.plan_steps:  # the curriculum of LossConfig.plan_steps
            batch = dict(batch, label=jnp.where(state.step < cfg.loss.plan_steps, batch["plan"], batch["label"]))
        carry = reset_carry(state.carry, batch["reset"])
        (_, (metrics, carry)), grads = grad_fn(state.params, carry, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            carry=jax.lax.stop_gradient(carry),
        )
        return new_state, metrics

    return train_step


@dataclasses.dataclass
class Setup:
    """Everything derived from the config and the mesh that the loop and checkpoints need."""

    cfg: Config
    mesh: jax.sharding.Mesh
    graphdef: Any
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    shardings: TrainState
    """NamedSharding per leaf of the train state."""
    abstract_state: TrainState
    """ShapeDtypeStructs with shardings: the restore target."""

    @classmethod
    def create(cls, cfg: Config, mesh: jax.sharding.Mesh) -> "Setup":
        sharding.check_batch_size(cfg.train.batch_size, mesh)
        total_steps = cfg.train.steps
        optimizer = make_optimizer(cfg.optim, total_steps)
        abstract_model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
        graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
        abstract = jax.eval_shape(functools.partial(_init_state, cfg, optimizer), jax.random.key(0))
        params_sh = sharding.param_shardings(abstract_params, mesh)
        shardings = TrainState(
            step=sharding.replicated(mesh),
            params=params_sh,
            opt_state=sharding.opt_state_shardings(optimizer, abstract.opt_state, params_sh, mesh),
            carry=jax.tree.map(lambda _: sharding.data_sharding(mesh), abstract.carry),
        )
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
        )
        return cls(cfg, mesh, graphdef, optimizer, make_schedule(cfg.optim, total_steps), shardings, abstract)

    def init_state(self) -> TrainState:
        """A fresh, sharded train state from ``train.seed``."""
        init = jax.jit(functools.partial(_init_state, self.cfg, self.optimizer), out_shardings=self.shardings)
        return init(jax.random.key(self.cfg.train.seed))

    def jit_train_step(self) -> Callable:
        return jax.jit(
            make_train_step(self.graphdef, self.optimizer, self.cfg),
            in_shardings=(self.shardings, sharding.data_sharding(self.mesh)),
            out_shardings=(self.shardings, sharding.replicated(self.mesh)),
            donate_argnums=0,
        )


def fresh_steps(cfg: Config, batches: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    """Trains a fresh model (``train.seed``) one train step per batch of ``batches`` (an optimiser
    update every ``optim.accumulate`` of them, as in ``train``), with no checkpoint, log or resume,
    yielding each batch with its step's metrics as floats. Why: short experiments that feed their
    own batches (``benchmarks/*_probe.py``) share the very train step of ``train``."""
    setup = Setup.create(cfg, sharding.make_mesh(cfg.mesh))
    state, step = setup.init_state(), setup.jit_train_step()
    for batch in batches:
        state, metrics = step(state, sharding.put_batch(batch, setup.mesh))
        yield batch, {name: float(value) for name, value in metrics.items()}


def _init_state(cfg: Config, optimizer: optax.GradientTransformation, key) -> TrainState:
    model_key = jax.random.split(key)[0]  # the first of two, as when the second drove dropout: the same init
    model = build_model(cfg, nnx.Rngs(model_key))
    params = nnx.state(model, nnx.Param)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        carry=model.init_carry(cfg.train.batch_size),
    )


def train(
    cfg: Config,
    workdir: str | Path,
    batches: BatchSource,
    *,
    devices: Optional[list] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Trains to ``cfg.train.steps`` optimiser steps, resuming from ``workdir`` if it holds a
    checkpoint. Returns the logged metric rows of this run.

    The workdir is locked for the run (``omnirl_jax.workdir``; a second trainer raises
    ``WorkdirError``), and nothing in it is written before the checkpoint and the loader position
    are restored: a config that does not fit raises with the workdir as it was. SIGINT or SIGTERM
    stop the run after the step in flight with a checkpoint of it, raising ``Interrupted``
    (``omnirl_jax.interrupt``).

    ``log`` gets one line each for what a user should know (primary host only): fresh start or
    resume (and from which step), a checkpoint skipped as corrupt, the config keys changed since
    the last start, where metrics and checkpoints go, that the first step compiles, and at the
    end the last metrics and the newest checkpoint."""
    is_main = jax.process_index() == 0
    say = log if is_main else (lambda _: None)
    with Workdir(workdir, own=is_main) as run_dir:
        workdir = run_dir.path
        mesh = sharding.make_mesh(cfg.mesh, devices)
        setup = Setup.create(cfg, mesh)
        if cfg.checkpoint.best_metric is not None and cfg.checkpoint.best_metric not in step_metrics(cfg):
            raise ConfigError(f"config key 'checkpoint.best_metric': {cfg.checkpoint.best_metric!r} is not one of {list(step_metrics(cfg))}")
        evaluator = _evaluator(cfg, workdir)
        checkpointer = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
        writer = None
        try:
            restored = checkpointer.restore(setup.abstract_state, warn=say, set_aside=True)
            if restored is None:
                state, start, window = setup.init_state(), 0, []
                say(f"starting fresh in {workdir} (no checkpoint in {checkpointer.directory})")
            else:
                state, saved, start = restored
                batches.restore(_loader_position(saved["processes"], checkpointer.directory / str(start)))
                # Checkpoints from before the window was saved have none: theirs was lost then.
                window = [{k: np.float32(v) for k, v in m.items()} for m in saved.get("log_window", [])]
                say(f"resuming from step {start} of {checkpointer.directory}")
            if is_main:
                run_dir.record_start(to_dict(cfg), start, say, resolve=resolve)
            columns = step_metrics(cfg) + RATE_METRICS + (evaluator.columns() if evaluator else ())
            writer = MetricsWriter(workdir, start, columns, enabled=is_main)
            if start >= cfg.train.steps:
                say(f"nothing to train: step {start} already reaches train.steps={cfg.train.steps}")
                return []
            say(f"training steps {start + 1}..{cfg.train.steps}; metrics to {workdir / 'metrics.csv'} and "
                f"{workdir / 'tensorboard'}, checkpoints every {cfg.checkpoint.every} steps to {checkpointer.directory}")
            say("the first step compiles the model: a minute or more without progress is expected")
            if evaluator is not None:
                say(f"evaluating online on {cfg.eval.tasks} held-out {cfg.eval.suite} tasks every {cfg.eval.every} steps "
                    f"and at the end (the first evaluation compiles: a minute)")
            with StopRequest() as stop:
                history = _run(setup, state, start, window, batches, checkpointer, writer, stop, evaluator, say,
                               progress and is_main)
            last = history[-1]
            say(f"done: step {last['step']}, loss {last['loss']:.4f}, policy accuracy {last['policy_accuracy']:.3f}, "
                f"{last['tokens_per_s']:.3g} tokens/s; checkpoint {checkpointer.directory / str(cfg.train.steps)}")
            if evaluator is not None and evaluator.latest is not None and evaluator.latest.step == cfg.train.steps:
                say(evaluator.describe(evaluator.latest))
            return history
        finally:
            checkpointer.close()
            if writer is not None:
                writer.close()


def _evaluator(cfg: Config, workdir: Path):
    """The evaluation during training of ``cfg.eval`` (None when off). Imported only then: the
    evaluator imports this module."""
    if cfg.eval.every == 0:
        return None
    from omnirl_jax.eval.in_training import InTrainingEval

    return InTrainingEval(cfg, workdir / "eval")


def _run(setup: Setup, state: TrainState, start: int, window: list[dict], batches: BatchSource,
         checkpointer: Checkpointer, writer: MetricsWriter, stop: StopRequest, evaluator, say: Callable[[str], None],
         progress: bool) -> list[dict]:
    """The loop from ``start``. ``window``: the metrics of the steps since the last logged row
    (restored from the checkpoint, so a row whose window a resume splits equals the row of an
    uninterrupted run); every checkpoint saves it. The evaluation during training (``evaluator``,
    if any) runs before the step's checkpoint, its figures in the step's row; a step at which a
    stop was requested skips it (``omnirl-eval`` plays the checkpoint)."""
    cfg = setup.cfg
    total, accumulate = cfg.train.steps, cfg.optim.accumulate
    tokens_per_step = accumulate * cfg.train.batch_size * cfg.train.segment_len * cfg.model.tokens_per_step
    train_step = setup.jit_train_step()
    history, pending, last_metrics = [], list(window), None
    bar = tqdm(total=total, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start + 1, total + 1):
            for _ in range(accumulate):
                state, metrics = train_step(state, sharding.put_batch(next(batches), setup.mesh))
                if pending:  # at most two steps in flight, so queued batches cannot pile up in memory
                    jax.block_until_ready(pending[-1])
                pending.append(metrics)
            window_steps += 1
            bar.update(1)
            row = {}
            if step % cfg.train.log_every == 0 or step == total:
                means = {k: float(np.mean(v)) for k, v in _stack(pending).items()}
                elapsed = time.perf_counter() - window_start
                means["lr"] = float(setup.schedule(step - 1))  # the rate of the last update
                means["steps_per_s"] = window_steps / elapsed
                means["tokens_per_s"] = window_steps * tokens_per_step / elapsed
                bar.set_postfix(loss=f"{means['loss']:.4f}", tok_s=f"{means['tokens_per_s']:.3g}")
                row, last_metrics, pending = means, means, []
                window_start, window_steps = time.perf_counter(), 0
            signum = stop.requested()
            if evaluator is not None and (step % cfg.eval.every == 0 or step == total) and not signum:
                eval_start = time.perf_counter()
                evaluation = evaluator(state.params, step)
                row = {**row, **evaluation.metrics}
                if step < total:  # the last one is the run's last line (``train``)
                    with tqdm.external_write_mode():
                        say(evaluator.describe(evaluation))
                window_start += time.perf_counter() - eval_start  # the next window's rates count training only
            if row:
                writer.write(step, row)
                history.append({"step": step, **row})
            if step % cfg.checkpoint.every == 0 or step == total or signum:
                saved_window = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
                checkpointer.save(step, state, {"processes": _gather_loader_states(batches.state()),
                                                "log_window": saved_window}, last_metrics)
            if signum and step < total:  # at the last step the run is simply done
                raise Interrupted(signum, step)
    finally:
        bar.close()
    return history


def _loader_position(states: list[dict], where: Path) -> dict:
    """The loader state to resume from, given every saving process's. A loader's state names the
    global batch's position, never the process's rows (``omnirl_jax.data.loader``), so all are
    equal and any number of processes may resume from them; processes that disagree would each
    have trained on batches of different steps, a run no resume can continue."""
    differing = [i for i, state in enumerate(states) if state != states[0]]
    if differing:
        raise CheckpointError(f"checkpoint {where}: its {len(states)} processes saved different loader positions "
                              f"(process 0: {states[0]}, process {differing[0]}: {states[differing[0]]}); "
                              "resume from another step")
    return states[0]


def _gather_loader_states(state: dict) -> list[dict]:
    """Every process's loader position, in process order (the checkpoint's JSON is written by the
    primary host only): all equal, kept so that a resume can check it (``_loader_position``)."""
    if jax.process_count() == 1:
        return [state]
    encoded = np.frombuffer(json.dumps(state).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([encoded.size]))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: encoded.size] = encoded
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(rows, sizes.reshape(-1))]


def _stack(metrics: list[dict]) -> dict:
    """Each metric's values over ``metrics`` (device arrays or restored float32 scalars), on the host."""
    metrics = jax.device_get(metrics)
    return {k: np.stack([m[k] for m in metrics]) for k in metrics[0]}
