"""The OmniRL model: a step's tokens (``embedding``), a causal GLA or delta-rule backbone, three heads.

The policy head reads the observation token (it has seen the prompt and the observation, not the
action); the next-state and reward heads read the action token (they have seen the action, not
the reward). A causal convolution may mix neighbouring tokens first (``token_conv``).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from omnirl_jax.config import ModelConfig
from omnirl_jax.model.embedding import StepEmbedding
from omnirl_jax.model.layers import Block, Dense, TokenConv


@jax.tree_util.register_pytree_with_keys_class
class Carry:
    """What the model carries across segments, per row: each block's mixer state, the token
    convolution's last inputs (``token_conv``; else None) and the reward statistics
    (``reward_zscore``, ``reward_zscores``; else None).

    Why a hand-made pytree: it flattens to one positional list (blocks, convolution, statistics:
    the parts present, keys 0, 1, ...), the layout of the plain tuple it replaced, so checkpoints
    saved before still restore. The parts present are part of the tree's structure (``layout``)."""

    def __init__(self, blocks, conv=None, reward_stats=None, layout: Optional[tuple] = None):
        self.blocks, self.conv, self.reward_stats = tuple(blocks), conv, reward_stats
        self.layout = layout or (len(self.blocks), conv is not None, reward_stats is not None)

    def tree_flatten_with_keys(self):
        n, conv, stats = self.layout
        parts = [*self.blocks] + [self.conv] * conv + [self.reward_stats] * stats
        return [(jax.tree_util.SequenceKey(i), x) for i, x in enumerate(parts)], self.layout

    @classmethod
    def tree_unflatten(cls, layout, parts):
        (n, conv, stats), parts = layout, list(parts)
        rest = iter(parts[n:])
        return cls(parts[:n], next(rest) if conv else None, next(rest) if stats else None, layout)


class OmniRL(StepEmbedding):
    def __init__(self, cfg: ModelConfig, *, n_states: int, n_actions: int, rngs: nnx.Rngs,
                 behaviour_head: bool = False):
        super().__init__(cfg, n_states=n_states, n_actions=n_actions, rngs=rngs)
        d = cfg.d_model
        self.reward_zscore = cfg.reward_zscore
        # Positions of the observation and action tokens within a step's token group.
        self.obs_at, self.action_at = (0, 1) if cfg.fused_step else (1, 3)
        self.token_conv = TokenConv(d, cfg.token_conv) if cfg.token_conv > 1 else None
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = nnx.RMSNorm(d, rngs=rngs)
        head = lambda n: Dense(d, n, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
        self.policy_head = head(n_actions)
        self.next_state_head = head(n_states)
        self.reward_head = head(1)
        self.behaviour_head = head(n_actions) if behaviour_head else None  # LossConfig.behaviour
        self.remat = cfg.remat

    def init_carry(self, batch: int) -> Carry:
        """The ``Carry`` of ``batch`` fresh sequences."""
        return Carry([block.mixer.init_state(batch) for block in self.blocks],
                     None if self.token_conv is None else self.token_conv.init_state(batch),
                     jnp.zeros((batch, 3), jnp.float32) if self.reward_zscore else None)

    def __call__(self, batch: dict, carry: Carry):
        """Returns ({policy_logits [B,T,A], next_obs_logits [B,T,S], reward [B,T]}, new carry), and
        ``behaviour_logits`` [B,T,A] with a behaviour head; with ``reward_zscore``, ``reward_target``
        [B,T], the rewards' z-scores, which the reward head then predicts instead of the raw reward."""
        zscore = stats = conv = None
        if self.reward_zscore:
            zscore, stats = reward_zscores(batch["reward"], batch["action"] < self.action_embed.num_embeddings - 1,
                                           carry.reward_stats)
        x = self.embed(batch, zscore)
        if self.token_conv is not None:
            x, conv = self.token_conv(x, carry.conv)
        apply = nnx.remat(Block.__call__) if self.remat else Block.__call__
        states = []
        for block, state in zip(self.blocks, carry.blocks):
            x, state = apply(block, x, state)
            states.append(state)
        b, t = batch["obs"].shape
        h = self.final_norm(x).reshape(b, t, self.tokens_per_step, -1)
        h_obs, h_action = h[:, :, self.obs_at], h[:, :, self.action_at]
        outputs = {
            "policy_logits": self.policy_head(h_obs),
            "next_obs_logits": self.next_state_head(h_action),
            "reward": self.reward_head(h_action)[..., 0],
        }
        if self.behaviour_head is not None:
            outputs["behaviour_logits"] = self.behaviour_head(h_obs)
        if self.reward_zscore:
            outputs["reward_target"] = zscore
        return outputs, Carry(states, conv, stats)


ZSCORE_FLOOR = 0.01
"""Added to the spread in ``reward_zscores`` (noiseless bandit arms differ by 0.002 at the tenth
percentile, by 0.038 at the median)."""
ZSCORE_CLIP = 3.0


def reward_zscores(reward, valid, stats):
    """Each reward's z-score against the earlier rewards of its sequence, and the new statistics.

    ``reward``, ``valid`` [B, T] (``valid``: a real action's reward, not a terminal record's);
    ``stats`` [B, 3] the count, sum and sum of squares of the valid rewards of earlier calls.
    ``z = (r - mean) / sqrt(variance + ZSCORE_FLOOR^2)`` over the earlier rewards only (so a reward
    does not shrink its own score), clipped to ``+-ZSCORE_CLIP``: after one pull of a noiseless arm,
    a second arm 0.03 or more better reads as +3. ``z = 0`` where nothing was seen before and on invalid steps.
    Sums are float32 and cumulative: exact enough for the ladder's sequences (up to ~10^4 steps);
    over 10^5 steps the variance by ``E[r^2] - E[r]^2`` loses digits."""
    w = valid.astype(jnp.float32)
    r = reward.astype(jnp.float32) * w
    running = jnp.stack([w, r, r * r], axis=-1)  # [B, T, 3]
    before = stats[:, None] + jnp.cumsum(running, axis=1) - running
    n = jnp.maximum(before[..., 0], 1.0)
    mean = before[..., 1] / n
    variance = jnp.maximum(before[..., 2] / n - mean * mean, 0.0)
    z = jnp.clip((reward - mean) * jax.lax.rsqrt(variance + ZSCORE_FLOOR ** 2), -ZSCORE_CLIP, ZSCORE_CLIP)
    z = jnp.where(valid & (before[..., 0] > 0), z, 0.0)
    return z, stats + running.sum(axis=1)


def reset_carry(carry: Carry, reset):
    """Zeroes the carried state of rows where ``reset`` [B] is true (a zero state is a fresh one)."""

    def zero_rows(x):
        mask = reset.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(mask, jnp.zeros_like(x), x)

    return jax.tree.map(zero_rows, carry)
