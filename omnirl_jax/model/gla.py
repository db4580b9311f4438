"""Linear-attention recurrences with a per-head, data-dependent scalar decay: gated linear
attention (GLA) and the gated delta rule.

Recurrences per head (state S is [K, V], kept in float32; a_t = exp(g_t), g_t <= 0)::

    GLA:         S_t = a_t S_{t-1} + k_t^T v_t
    delta rule:  S_t = a_t S_{t-1} + beta_t k_t^T (v_t - a_t k_t S_{t-1})      o_t = q_t S_t

The delta rule writes, under key k_t, the difference between the new value and what the decayed
memory already holds there (Widrow-Hoff; Yang et al. 2024, "Gated Delta Networks"): with unit keys
and ``beta = 1`` a key's slot holds its latest value, with smaller ``beta`` a running average of
its values, where GLA only ever adds. That is the per-key mean an in-context bandit or tabular
learner needs (what each arm, each state-action pair paid).

``gla_chunked`` is the training algorithm for both: inside a chunk of C tokens the outputs are
computed in parallel (a masked C x C decay matrix), across chunks the state is carried by
``jax.lax.scan``, so memory is O(C^2 + K*V) per head rather than O(L^2). For the delta rule the
chunk's written values ``w_t = beta_t (v_t - a_t k_t S_{t-1})`` depend on one another; they solve
one unit lower-triangular C x C system per chunk, after which the chunk is a GLA chunk with values
``w``. ``gla_recurrent`` is the token-by-token reference the tests compare it to. Both take and
return the state, so a long sequence can be processed segment by segment with identical results.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gla_chunked(q, k, v, log_decay, state, chunk_size: int, beta=None):
    """Chunk-parallel GLA, or the gated delta rule when ``beta`` is given.

    Args:
      q, k: [B, L, H, K]; v: [B, L, H, V]; log_decay: [B, L, H] (g_t <= 0);
      state: [B, H, K, V] float32, the state before the first token.
      chunk_size: tokens per chunk (the delta rule rounds it up to a power of two); L need not be a
        multiple (padding tokens leave the state as is).
      beta: [B, L, H] write strengths in [0, 1] (delta rule), or None (GLA).
    Returns:
      (outputs [B, L, H, V] float32, final state [B, H, K, V] float32).
    """
    batch, length, heads, _ = q.shape
    delta = beta is not None
    if delta:  # ``unit_lower_inverse`` halves blocks: round the chunk up to a power of two
        chunk_size = 1 << (chunk_size - 1).bit_length()
    pad = (-length) % chunk_size
    beta = jnp.zeros_like(log_decay) if beta is None else beta
    q, k, v, log_decay, beta = (x.astype(jnp.float32) for x in (q, k, v, log_decay, beta))
    if pad:
        # Zero keys, zero log-decay (a = 1) and zero beta leave the state unchanged on padding tokens.
        q, k, v, log_decay, beta = (
            jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) for x in (q, k, v, log_decay, beta)
        )
    n_chunks = (length + pad) // chunk_size

    def to_chunks(x):  # [B, L, ...] -> [N, B, C, ...] so that scan runs over chunks
        x = x.reshape(batch, n_chunks, chunk_size, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    causal = jnp.tril(jnp.ones((chunk_size, chunk_size), dtype=bool))[None, :, :, None]
    eye = jnp.eye(chunk_size, dtype=jnp.float32)
    strict = causal[0, :, :, 0] & ~eye.astype(bool)  # [C, C]: j < i

    def chunk_step(s, xs):
        qc, kc, vc, gc, bc = xs
        b = jnp.cumsum(gc, axis=1)  # [B, C, H]: log of the decay from chunk start to token i
        # Mask before exp: above the diagonal b_i - b_j > 0 and could overflow.
        decay = jnp.exp(jnp.where(causal, b[:, :, None, :] - b[:, None, :, :], -jnp.inf))  # [B, C, C, H]
        from_start = jnp.exp(b)[..., None]  # [B, C, H, 1]: decay of the chunk's initial state
        if delta:
            # w_i + beta_i sum_{j<i} e^{b_i - b_j} (k_i . k_j) w_j = beta_i (v_i - e^{b_i} k_i S_0)
            lower = bc[:, :, None, :] * jnp.einsum("bihk,bjhk->bijh", kc, kc) * decay * strict[..., None]
            rhs = bc[..., None] * (vc - jnp.einsum("bihk,bhkv->bihv", kc * from_start, s))
            vc = jnp.einsum("bhij,bjhv->bihv", unit_lower_inverse(eye + jnp.moveaxis(lower, 3, 1)), rhs)
        scores = jnp.einsum("bihk,bjhk->bijh", qc, kc) * decay
        out = jnp.einsum("bijh,bjhv->bihv", scores, vc)
        out += jnp.einsum("bihk,bhkv->bihv", qc * from_start, s)
        b_last = b[:, -1]  # [B, H]
        k_to_end = kc * jnp.exp(b_last[:, None, :] - b)[..., None]
        s = jnp.exp(b_last)[..., None, None] * s + jnp.einsum("bjhk,bjhv->bhkv", k_to_end, vc)
        return s, out

    xs = tuple(map(to_chunks, (q, k, v, log_decay, beta)))
    state, out = jax.lax.scan(chunk_step, state.astype(jnp.float32), xs)
    out = jnp.moveaxis(out, 0, 1).reshape(batch, n_chunks * chunk_size, heads, -1)
    return out[:, :length], state


def unit_lower_inverse(m):
    """Inverse of unit lower-triangular matrices [..., C, C] (C a power of two), by doubling
    diagonal blocks: ``[[A, 0], [X, D]]^-1 = [[A^-1, 0], [-D^-1 X A^-1, D^-1]]``. Why not
    ``solve_triangular``: XLA's CPU triangular solve of many small systems is a slow loop (a
    training step 5x slower), while this is log2(C) batched matmuls, as stable as substitution."""
    size = m.shape[-1]
    inv = jnp.broadcast_to(jnp.eye(size, dtype=m.dtype), m.shape)
    half = 1
    while half < size:
        n = size // (2 * half)

        def diagonal_blocks(x):  # [..., C, C] -> [..., n, 2 half, 2 half]
            x = x.reshape(*x.shape[:-2], n, 2 * half, n, 2 * half)
            return jnp.moveaxis(jnp.diagonal(x, axis1=-4, axis2=-2), -1, -3)

        blocks, m_blocks = diagonal_blocks(inv), diagonal_blocks(m)
        a, d = blocks[..., :half, :half], blocks[..., half:, half:]
        x = -d @ m_blocks[..., half:, :half] @ a
        blocks = blocks.at[..., half:, :half].set(x)
        inv = jnp.einsum("...nij,nm->...nimj", blocks, jnp.eye(n, dtype=m.dtype)).reshape(m.shape)
        half *= 2
    return inv


def gla_recurrent(q, k, v, log_decay, state, beta=None):
    """Token-by-token reference of the same recurrences (slow; for tests)."""
    delta = beta is not None
    beta = jnp.zeros_like(log_decay) if beta is None else beta
    q, k, v, log_decay, beta = (jnp.moveaxis(x.astype(jnp.float32), 1, 0) for x in (q, k, v, log_decay, beta))

    def token_step(s, xs):
        qt, kt, vt, gt, bt = xs
        s = jnp.exp(gt)[..., None, None] * s
        if delta:
            vt = bt[..., None] * (vt - jnp.einsum("bhk,bhkv->bhv", kt, s))
        s = s + kt[..., :, None] * vt[..., None, :]
        return s, jnp.einsum("bhk,bhkv->bhv", qt, s)

    state, out = jax.lax.scan(token_step, state.astype(jnp.float32), (q, k, v, log_decay, beta))
    return jnp.moveaxis(out, 0, 1), state
