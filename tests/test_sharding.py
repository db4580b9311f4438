"""Sharded (8 fake CPU devices, data x model mesh) training equals single-device training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SyntheticBatches, random_batch
from jax.sharding import AxisType, PartitionSpec as P

from omnirl_jax import sharding
from omnirl_jax.config import Config, MeshConfig, ModelConfig, TrainConfig
from omnirl_jax.train import Setup, make_loss_fn

N_STATES = 12


def tiny_config() -> Config:
    return Config(
        # One block keeps compilation short; the carry, head and MLP shardings are all exercised.
        model=ModelConfig(d_model=32, n_layers=1, n_heads=4, chunk_size=16),
        train=TrainConfig(batch_size=8, segment_len=24, steps=10),
    )


@pytest.fixture(scope="module")
def setups():
    cfg = tiny_config()
    cfg.data.generator.n_states = N_STATES
    single = Setup.create(cfg, sharding.make_mesh(MeshConfig(data=1, model=1), jax.devices()[:1]))
    sharded = Setup.create(cfg, sharding.make_mesh(MeshConfig(data=4, model=2)))
    return cfg, single, sharded


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_mesh_axes_and_partition_rules(setups):
    _, _, sharded = setups
    mesh = sharded.mesh
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    specs = {sharding._path_name(path): s.spec for path, s in jax.tree_util.tree_leaves_with_path(sharded.shardings.params)}
    assert specs["blocks/0/mixer/q_proj/kernel"] == P(None, "model")
    assert specs["blocks/0/mlp/down_proj/kernel"] == P("model", None)
    assert specs["obs_embed/embedding"] == P()
    assert all(s.spec == P("data") for s in jax.tree.leaves(sharded.shardings.carry))


def test_sharded_loss_and_grads_equal_single_device(setups):
    cfg, single, sharded = setups
    state = single.init_state()
    batch = random_batch(np.random.default_rng(0), batch_size=8, segment_len=24, n_states=N_STATES, offset=480)
    batch["reset"][:] = False
    # A non-zero carried state, so the carry's sharding is exercised too.
    carry = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), state.carry)
    grad_fn = jax.value_and_grad(make_loss_fn(single.graphdef, cfg), has_aux=True)

    (loss_1, (metrics_1, carry_1)), grads_1 = jax.jit(grad_fn)(
        state.params, carry, sharding.put_batch(batch, single.mesh)
    )
    sharded_grad_fn = jax.jit(
        grad_fn,
        in_shardings=(sharded.shardings.params, sharded.shardings.carry, sharding.data_sharding(sharded.mesh)),
    )
    params = jax.device_put(state.params, sharded.shardings.params)
    device_batch = sharding.put_batch(batch, sharded.mesh)
    assert len(device_batch["obs"].sharding.device_set) == 8
    sharded_carry = jax.device_put(carry, sharded.shardings.carry)
    (loss_8, (metrics_8, carry_8)), grads_8 = sharded_grad_fn(params, sharded_carry, device_batch)

    assert rel_err(loss_8, loss_1) < 1e-5
    for name in metrics_1:
        assert rel_err(metrics_8[name], metrics_1[name]) < 1e-5, name
    for got, want in zip(jax.tree.leaves(grads_8), jax.tree.leaves(grads_1)):
        assert rel_err(got, want) < 1e-5
    for got, want in zip(jax.tree.leaves(carry_8), jax.tree.leaves(carry_1)):
        assert rel_err(got, want) < 1e-5


def test_sharded_train_steps_equal_single_device(setups):
    cfg, single, sharded = setups
    results, initial = [], single.init_state()
    for setup in (single, sharded):
        # A copy: the train step donates its input state.
        state, step = jax.device_put(jax.tree.map(jnp.copy, initial), setup.shardings), setup.jit_train_step()
        batches = SyntheticBatches(batch_size=8, segment_len=24, seq_len=48, n_states=N_STATES)
        losses = []
        for _ in range(3):
            state, metrics = step(state, sharding.put_batch(next(batches), setup.mesh))
            losses.append(float(metrics["loss"]))
        results.append((losses, jax.device_get(state.params)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[0][1])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_put_batch_copies_host_buffers(setups):
    _, single, _ = setups
    batch = random_batch(np.random.default_rng(0), batch_size=8, segment_len=24, n_states=N_STATES)
    obs = batch["obs"]
    before = obs.copy()
    device_batch = sharding.put_batch(batch, single.mesh)
    obs[:] = 0  # a loader reusing its buffer
    np.testing.assert_array_equal(np.asarray(device_batch["obs"]), before)
    assert device_batch["offset"].dtype == np.int32
