"""The chunked GLA and delta-rule kernel against plain reference implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnirl_jax.model.gla import gla_chunked, gla_recurrent


def gla_inputs(seed, batch=2, length=150, heads=3, dim=8):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, dim)), jnp.float32) for _ in range(3))
    # Decays from ~0.02 to ~1: covers fast forgetting and long memory.
    log_decay = jax.nn.log_sigmoid(jnp.asarray(rng.normal(size=(batch, length, heads)) * 3 + 2, jnp.float32))
    state = jnp.asarray(rng.normal(size=(batch, heads, dim, dim)), jnp.float32)
    return q, k, v, log_decay, state


def delta_inputs(seed, **shape):
    """Delta-rule inputs: unit keys (as the layer makes them) and write strengths in (0, 1)."""
    q, k, v, log_decay, state = gla_inputs(seed, **shape)
    beta = jax.nn.sigmoid(jnp.asarray(np.random.default_rng(seed + 100).normal(size=log_decay.shape), jnp.float32))
    return q, k / jnp.linalg.norm(k, axis=-1, keepdims=True), v, log_decay, state, beta


@pytest.mark.parametrize("chunk_size", [3, 16, 64])
def test_delta_rule_chunked_matches_recurrent(chunk_size):
    q, k, v, g, s0, beta = delta_inputs(4)
    out, state = gla_chunked(q, k, v, g, s0, chunk_size, beta)
    ref_out, ref_state = gla_recurrent(q, k, v, g, s0, beta)
    assert rel_err(out, ref_out) < 1e-5
    assert rel_err(state, ref_state) < 1e-5
    # The rule differs from GLA on the same inputs (beta is not ignored).
    assert rel_err(gla_chunked(q, k, v, g, s0, chunk_size)[0], ref_out) > 0.1


def test_delta_rule_slot_holds_the_latest_value():
    """With beta = 1, no decay and one unit key written twice, reading that key gives the second
    value, not the sum GLA would give."""
    k = jnp.zeros((1, 2, 1, 4)).at[..., 0].set(1.0)
    v = jnp.array([1.0, 3.0]).reshape(1, 2, 1, 1) * jnp.ones((1, 2, 1, 4))
    zeros, ones = jnp.zeros((1, 2, 1)), jnp.ones((1, 2, 1))
    out, _ = gla_chunked(k, k, v, zeros, jnp.zeros((1, 1, 4, 4)), 16, ones)
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 3.0], atol=1e-6)
    out, _ = gla_chunked(k, k, v, zeros, jnp.zeros((1, 1, 4, 4)), 16, 0.5 * ones)
    np.testing.assert_allclose(out[0, :, 0, 0], [0.5, 1.75], atol=1e-6)  # an exponential average


def rel_err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunked_matches_recurrent(chunk_size):
    q, k, v, g, s0 = gla_inputs(0)  # 150 tokens: not a multiple of the chunk
    out, state = gla_chunked(q, k, v, g, s0, chunk_size)
    ref_out, ref_state = gla_recurrent(q, k, v, g, s0)
    assert rel_err(out, ref_out) < 1e-5
    assert rel_err(state, ref_state) < 1e-5


@pytest.mark.parametrize("delta", [False, True])
def test_chunked_gradients_match_recurrent(delta):
    inputs = delta_inputs(1, length=70) if delta else gla_inputs(1, length=70)
    w = jnp.asarray(np.random.default_rng(2).normal(size=(2, 70, 3, 8)), jnp.float32)

    def loss(fn, *args):
        out, state = fn(*args)
        return jnp.sum(out * w) + jnp.sum(state)

    chunked = lambda q, k, v, g, s, *beta: gla_chunked(q, k, v, g, s, 32, *beta)
    argnums = tuple(range(len(inputs)))
    grads = jax.grad(lambda *a: loss(chunked, *a), argnums=argnums)(*inputs)
    ref = jax.grad(lambda *a: loss(gla_recurrent, *a), argnums=argnums)(*inputs)
    for got, want in zip(grads, ref):
        assert rel_err(got, want) < 1e-4


def test_segments_with_carried_state_equal_one_pass():
    q, k, v, g, s0 = gla_inputs(3, length=128)
    whole, whole_state = gla_chunked(q, k, v, g, s0, 16)
    first, mid_state = gla_chunked(q[:, :48], k[:, :48], v[:, :48], g[:, :48], s0, 16)
    second, end_state = gla_chunked(q[:, 48:], k[:, 48:], v[:, 48:], g[:, 48:], mid_state, 16)
    assert rel_err(jnp.concatenate([first, second], axis=1), whole) < 1e-5
    assert rel_err(end_state, whole_state) < 1e-5
