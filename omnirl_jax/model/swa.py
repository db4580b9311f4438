"""Sliding-window causal softmax attention with a carried key/value cache (baseline mixer).

Each token attends to itself and the previous ``window - 1`` tokens. Queries are processed in
blocks of ``window`` tokens, each against its own block and the one before it, so memory is
O(L * window) per segment. The last ``window`` keys/values (and whether they are real) are the
state carried to the next segment, so segment-wise processing equals one long pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init_cache(batch: int, window: int, heads: int, head_dim: int) -> dict:
    """An empty cache: no valid past tokens."""
    zeros = jnp.zeros((batch, window, heads, head_dim), jnp.float32)
    return {"k": zeros, "v": zeros, "valid": jnp.zeros((batch, window), jnp.float32)}


def sliding_window_attention(q, k, v, cache: dict, window: int):
    """Args: q, k, v [B, L, H, D]; cache from ``init_cache`` or a previous call.

    Returns (outputs [B, L, H, D] float32, the cache after the last token).
    """
    batch, length, heads, dim = q.shape
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    keys = jnp.concatenate([cache["k"], k], axis=1)  # [B, W + L, H, D]
    values = jnp.concatenate([cache["v"], v], axis=1)
    valid = jnp.concatenate([cache["valid"], jnp.ones((batch, length), jnp.float32)], axis=1)
    new_cache = {"k": keys[:, -window:], "v": values[:, -window:], "valid": valid[:, -window:]}

    pad = (-length) % window
    n_blocks = (length + pad) // window
    # Padding goes at the end: real queries never look at later (padded) keys.
    q = jnp.pad(q, [(0, 0), (0, pad), (0, 0), (0, 0)])
    keys, values = (jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)]) for x in (keys, values))
    valid = jnp.pad(valid, [(0, 0), (0, pad)])

    def pair_blocks(x):  # [B, W * (N + 1), ...] -> [B, N, 2W, ...]: previous block + own block
        x = x.reshape(batch, n_blocks + 1, window, *x.shape[2:])
        return jnp.concatenate([x[:, :-1], x[:, 1:]], axis=2)

    kb, vb, valid_b = pair_blocks(keys), pair_blocks(values), pair_blocks(valid)
    qb = q.reshape(batch, n_blocks, window, heads, dim)
    scores = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, kb) / jnp.sqrt(jnp.float32(dim))
    # Query i of a block sits at key index window + i; it sees key indices (i, window + i].
    qi = jnp.arange(window)[:, None]
    kj = jnp.arange(2 * window)[None, :]
    in_window = (kj > qi) & (kj <= qi + window)
    mask = in_window[None, None, None] & (valid_b[:, :, None, None, :] > 0)
    scores = jnp.where(mask, scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bnhqk,bnkhd->bnqhd", probs, vb)
    return out.reshape(batch, n_blocks * window, heads, dim)[:, :length], new_cache
