"""Gated linear attention with a per-head, data-dependent scalar decay.

Recurrence per head (state S is [K, V], kept in float32)::

    S_t = a_t * S_{t-1} + k_t^T v_t,     o_t = q_t S_t,     a_t = exp(g_t), g_t <= 0

``gla_chunked`` is the training algorithm: inside a chunk of C tokens the outputs are computed in
parallel (a masked C x C decay matrix), across chunks the state is carried by ``jax.lax.scan``, so
memory is O(C^2 + K*V) per head rather than O(L^2). ``gla_recurrent`` is the token-by-token
reference the tests compare it to. Both take and return the state, so a long sequence can be
processed segment by segment with identical results.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gla_chunked(q, k, v, log_decay, state, chunk_size: int):
    """Chunk-parallel GLA.

    Args:
      q, k: [B, L, H, K]; v: [B, L, H, V]; log_decay: [B, L, H] (g_t <= 0);
      state: [B, H, K, V] float32, the state before the first token.
      chunk_size: tokens per chunk; L need not be a multiple (padding tokens leave the state as is).
    Returns:
      (outputs [B, L, H, V] float32, final state [B, H, K, V] float32).
    """
    batch, length, heads, _ = q.shape
    pad = (-length) % chunk_size
    q, k, v, log_decay = (x.astype(jnp.float32) for x in (q, k, v, log_decay))
    if pad:
        # Zero keys and zero log-decay (a = 1) leave the state unchanged on padding tokens.
        q, k, v, log_decay = (
            jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) for x in (q, k, v, log_decay)
        )
    n_chunks = (length + pad) // chunk_size

    def to_chunks(x):  # [B, L, ...] -> [N, B, C, ...] so that scan runs over chunks
        x = x.reshape(batch, n_chunks, chunk_size, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    causal = jnp.tril(jnp.ones((chunk_size, chunk_size), dtype=bool))[None, :, :, None]

    def chunk_step(s, xs):
        qc, kc, vc, gc = xs
        b = jnp.cumsum(gc, axis=1)  # [B, C, H]: log of the decay from chunk start to token i
        # Mask before exp: above the diagonal b_i - b_j > 0 and could overflow.
        rel = jnp.where(causal, b[:, :, None, :] - b[:, None, :, :], -jnp.inf)
        scores = jnp.einsum("bihk,bjhk->bijh", qc, kc) * jnp.exp(rel)
        out = jnp.einsum("bijh,bjhv->bihv", scores, vc)
        out += jnp.einsum("bihk,bhkv->bihv", qc * jnp.exp(b)[..., None], s)
        b_last = b[:, -1]  # [B, H]
        k_to_end = kc * jnp.exp(b_last[:, None, :] - b)[..., None]
        s = jnp.exp(b_last)[..., None, None] * s + jnp.einsum("bjhk,bjhv->bhkv", k_to_end, vc)
        return s, out

    state, out = jax.lax.scan(chunk_step, state.astype(jnp.float32), tuple(map(to_chunks, (q, k, v, log_decay))))
    out = jnp.moveaxis(out, 0, 1).reshape(batch, n_chunks * chunk_size, heads, -1)
    return out[:, :length], state


def gla_recurrent(q, k, v, log_decay, state):
    """Token-by-token reference of the same recurrence (slow; for tests)."""
    q, k, v, log_decay = (jnp.moveaxis(x.astype(jnp.float32), 1, 0) for x in (q, k, v, log_decay))

    def token_step(s, xs):
        qt, kt, vt, gt = xs
        s = jnp.exp(gt)[..., None, None] * s + kt[..., :, None] * vt[..., None, :]
        return s, jnp.einsum("bhk,bhkv->bhv", qt, s)

    state, out = jax.lax.scan(token_step, state.astype(jnp.float32), (q, k, v, log_decay))
    return jnp.moveaxis(out, 0, 1), state
