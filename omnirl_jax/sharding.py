"""Device mesh, parameter partition rules and batch placement, all in one place.

The mesh has two axes: ``data`` (batch rows, and so the recurrent state, are split over it) and
``model`` (attention heads and MLP hidden units are split over it). Axis types are ``Auto``: the
XLA partitioner inserts the collectives, and the model code stays free of sharding annotations.
(``jax.make_mesh`` defaults to Explicit axes, under which a data-sharded embedding lookup fails.)
"""

from __future__ import annotations

import re

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from omnirl_jax.config import MeshConfig
from omnirl_jax.typed_config import ConfigError

PARTITION_RULES: tuple[tuple[str, P], ...] = (
    (r"mixer/(q_proj|k_proj|v_proj|out_gate|decay_proj|beta_proj)/kernel$", P(None, "model")),
    (r"mixer/(decay_proj|beta_proj)/bias$", P("model")),
    (r"mixer/o_proj/kernel$", P("model", None)),
    (r"mlp/(gate_proj|up_proj)/kernel$", P(None, "model")),
    (r"mlp/down_proj/kernel$", P("model", None)),
)
"""(regex over the parameter path 'blocks/3/mixer/q_proj/kernel', spec); first match wins.
Unmatched parameters (embeddings, norms, heads) are replicated: they are small."""


def initialize_distributed(cfg: MeshConfig) -> None:
    """Joins the multi-host job when the config asks; must run before any other JAX call."""
    if cfg.distributed:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
        )


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """A ('data', 'model') mesh over ``devices`` (default: all); data = -1 takes the rest.

    A single process may use fewer devices than it has (the first data x model of them); a
    multi-host mesh must cover every device, or some hosts would hold no shard.
    """
    devices = list(jax.devices() if devices is None else devices)
    data = len(devices) // cfg.model if cfg.data == -1 else cfg.data
    size = data * cfg.model
    if size == 0 or size > len(devices) or (size < len(devices) and jax.process_count() > 1):
        raise ConfigError(
            f"config key 'mesh.data': mesh {data} x {cfg.model} (data x model) does not fit the {len(devices)} devices"
        )
    return jax.make_mesh(
        (data, cfg.model), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices[:size]
    )


def _path_name(path) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
    return "/".join(parts)


def spec_for(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The partition spec of one parameter; a dimension the axis does not divide stays whole."""
    for pattern, spec in PARTITION_RULES:
        if re.search(pattern, name):
            return P(*(axis if axis is None or shape[i] % mesh.shape[axis] == 0 else None for i, axis in enumerate(spec)))
    return P()


def param_shardings(params, mesh: Mesh):
    """A tree like ``params`` (arrays or ShapeDtypeStructs) of NamedShardings."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(_path_name(path), x.shape, mesh)), params
    )


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_opt_state, params_shardings, mesh: Mesh):
    """Optimiser moments follow their parameters; counters and other state are replicated."""
    return optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt_state,
        params_shardings,
        transform_non_params=lambda _: NamedSharding(mesh, P()),
    )


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Batch rows (and the per-row recurrent state) split over the ``data`` axis."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Host batch (this process's rows) -> global device arrays sharded over ``data``.

    Every field is copied into a fresh buffer first: on CPU, device_put may alias the numpy
    buffer, and a loader may reuse its buffers for the next batch.
    """
    sharding = data_sharding(mesh)
    out = {}
    for name, value in batch.items():
        value = np.array(value, copy=True)
        if value.dtype == np.int64:
            value = value.astype(np.int32)  # offsets: JAX runs without x64; 2^31 steps is plenty
        out[name] = jax.make_array_from_process_local_data(sharding, value)
    return out
