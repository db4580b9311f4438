"""A trained model restored for acting: the parameters of an ``omnirl-train`` workdir's
checkpoint, or of an exported model (``omnirl_jax.pretrained``), in a ``ModelRunner``, with the
vocabulary its config trained it on. Shared by ``omnirl-eval``, the evaluation during training
and ``omnirl_jax.agent``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import jax
from flax import nnx

from omnirl_jax import pretrained, sharding
from omnirl_jax.checkpoint import CheckpointError, Checkpointer
from omnirl_jax.config import Config, MeshConfig, load_config
from omnirl_jax.eval.rollout import ModelRunner
from omnirl_jax.train import Setup, build_model
from omnirl_jax.typed_config import ConfigError


class EvalError(RuntimeError):
    """Evaluation cannot run; the message is one line for the user."""


# --------------------------------------------------------------------------- model loading
@dataclasses.dataclass
class LoadedModel:
    runner: ModelRunner
    n_states: int
    n_actions: int
    step: int
    config: Config


def load_model(workdir: str | Path, step: Optional[int] = None, warn: Callable[[str], None] = print) -> LoadedModel:
    """Restores the parameters of a training run (``omnirl-train --workdir``) and its config;
    without ``step``, of its newest intact checkpoint (a corrupt newer one is named to ``warn``).
    ``workdir`` may also be an exported model (``omnirl_jax.pretrained``).

    Why through ``train.Setup``/``checkpoint.Checkpointer``: the restore target is exactly what the
    trainer saves, so a checkpoint that does not match its ``config.yaml`` fails here with the
    checkpointer's one-line ``CheckpointError``. The model is rebuilt for stepping on one device
    (``make_runner``).
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise EvalError(f"checkpoint directory {workdir} does not exist")
    if pretrained.is_export(workdir):
        return _load_export(workdir, step)
    if not (workdir / "config.yaml").is_file():
        raise EvalError(f"{workdir} holds no config.yaml: pass the --workdir of an omnirl-train run")
    ckpt_dir = workdir / "checkpoints"
    if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
        raise EvalError(f"no checkpoint in {ckpt_dir}")
    try:
        cfg = load_config(str(workdir / "config.yaml"))
    except ConfigError as e:
        raise EvalError(f"{workdir / 'config.yaml'}: {e}") from None
    cfg.mesh = MeshConfig(data=1, model=1)
    cfg.checkpoint.restore_step = step
    cfg.checkpoint.async_save = False
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    try:
        setup = Setup.create(cfg, mesh)
        checkpointer = Checkpointer(ckpt_dir, cfg.checkpoint)
        try:
            restored = checkpointer.restore(setup.abstract_state, warn=warn)
        finally:
            checkpointer.close()
    except (CheckpointError, ConfigError) as e:
        raise EvalError(str(e)) from None
    if restored is None:
        raise EvalError(f"no checkpoint in {ckpt_dir}")
    state, _, restored_step = restored
    return LoadedModel(make_runner(cfg, state.params), cfg.data.generator.n_states, cfg.data.generator.n_actions, int(restored_step), cfg)


def _load_export(path: Path, step: Optional[int]) -> LoadedModel:
    """An exported model (``omnirl_jax.pretrained``)."""
    try:
        cfg = load_config(str(path / "config.yaml"))
        abstract = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
        params, info = pretrained.load(path, nnx.split(abstract, nnx.Param)[1])
    except ConfigError as e:
        raise EvalError(f"{path / 'config.yaml'}: {e}") from None
    except pretrained.ExportError as e:
        raise EvalError(str(e)) from None
    if step is not None and step != info["step"]:
        raise EvalError(f"{path} holds the parameters of step {info['step']} only, not step {step}")
    return LoadedModel(make_runner(cfg, params), cfg.data.generator.n_states, cfg.data.generator.n_actions, int(info["step"]), cfg)


def make_runner(cfg: Config, params) -> ModelRunner:
    """A ``ModelRunner`` of the model of ``cfg`` with ``params``, rebuilt for stepping: no remat,
    and a GLA chunk of one step's tokens (a one-step call then pads nothing; chunking changes no
    parameter or result)."""
    eval_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, chunk_size=cfg.model.tokens_per_step, remat=False))
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(eval_cfg, nnx.Rngs(0))), nnx.Param)
    return ModelRunner(graphdef, params, cfg.data.generator.n_actions)
