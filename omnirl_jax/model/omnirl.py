"""The OmniRL model: a step's tokens, a causal GLA (or sliding-window) backbone, three heads.

Token order per step t: prompt, observation, tag, behaviour action, reward (each embedding plus a
token-type embedding; the reward through a linear map of the scalar), or with
``ModelConfig.fused_step`` three tokens: prompt + observation + tag, action, reward. Options:
the action token also carries its step's observation, through the observation embedding and an
embedding of the (observation, action) pair (``pair_embed``); the reward token its observation
and the pair scaled by the reward (``reward_pair``); the reward token also gets the reward's
z-score within its sequence (``reward_zscore``); a causal convolution mixes neighbouring tokens
(``token_conv``). The policy head reads the observation token (it has seen the prompt and
the observation, not the action); the next-state and reward heads read the action token (they
have seen the action, not the reward).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from omnirl_jax.config import ModelConfig
from omnirl_jax.data.schema import TAGS
from omnirl_jax.model.layers import Block, Dense, TokenConv

class OmniRL(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, n_states: int, n_actions: int, rngs: nnx.Rngs,
                 behaviour_head: bool = False):
        d = cfg.d_model
        embed = lambda n: nnx.Embed(n, d, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
        self.prompt_embed, self.tag_embed = embed(len(TAGS)), embed(len(TAGS))
        self.obs_embed = embed(n_states)
        self.action_embed = embed(n_actions + 1)  # + the null action
        self.reward_zscore = cfg.reward_zscore
        self.reward_embed = Dense(2 if cfg.reward_zscore else 1, d, rngs=rngs)
        self.fused_step, self.tokens_per_step = cfg.fused_step, cfg.tokens_per_step
        # Positions of the observation and action tokens within a step's token group.
        self.obs_at, self.action_at = (0, 1) if cfg.fused_step else (1, 3)
        self.type_embed = embed(cfg.tokens_per_step)
        self.pair_embed = embed(n_states * (n_actions + 1)) if cfg.pair_embed else None
        self.reward_pair_embed = embed(n_states * (n_actions + 1)) if cfg.reward_pair else None
        self.zscore_pair_embed = embed(n_states * (n_actions + 1)) if cfg.reward_pair and cfg.reward_zscore else None
        self.token_conv = TokenConv(d, cfg.token_conv) if cfg.token_conv > 1 else None
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = nnx.RMSNorm(d, rngs=rngs)
        head = lambda n: Dense(d, n, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
        self.policy_head = head(n_actions)
        self.next_state_head = head(n_states)
        self.reward_head = head(1)
        self.behaviour_head = head(n_actions) if behaviour_head else None  # LossConfig.behaviour
        self.remat = cfg.remat

    def init_carry(self, batch: int) -> tuple:
        """The recurrent state of every block, then of the token convolution and the reward
        statistics (``reward_zscores``) where the config has them, for ``batch`` fresh sequences."""
        conv = () if self.token_conv is None else (self.token_conv.init_state(batch),)
        stats = (jnp.zeros((batch, 3), jnp.float32),) if self.reward_zscore else ()
        return tuple(block.mixer.init_state(batch) for block in self.blocks) + conv + stats

    def embed(self, batch: dict, zscore=None):
        """[B, T] step fields -> [B, T * tokens per step, d] token embeddings in step-major order;
        ``zscore`` [B, T] the rewards' z-scores (``reward_zscore``)."""
        obs, action = self.obs_embed(batch["obs"]), self.action_embed(batch["action"])
        reward = batch["reward"][..., None].astype(jnp.float32)
        pair = batch["obs"] * self.action_embed.num_embeddings + batch["action"]
        if self.pair_embed is not None:
            action = action + obs + self.pair_embed(pair)
        scalars = reward if zscore is None else jnp.concatenate([reward, zscore[..., None]], axis=-1)
        reward_token = self.reward_embed(scalars)
        if self.reward_pair_embed is not None:
            reward_token = reward_token + obs + reward * self.reward_pair_embed(pair)
        if self.zscore_pair_embed is not None:
            reward_token = reward_token + zscore[..., None] * self.zscore_pair_embed(pair)
        prompt, tag = self.prompt_embed(batch["prompt"]), self.tag_embed(batch["tag"])
        group = [prompt + obs + tag] if self.fused_step else [prompt, obs, tag]
        tokens = jnp.stack(group + [action, reward_token], axis=2) + self.type_embed.embedding[...]
        b, t = batch["obs"].shape
        return tokens.reshape(b, t * self.tokens_per_step, -1)

    def __call__(self, batch: dict, carry: tuple, *, dropout_key=None):
        """Returns ({policy_logits [B,T,A], next_obs_logits [B,T,S], reward [B,T]}, new carry), and
        ``behaviour_logits`` [B,T,A] with a behaviour head; with ``reward_zscore``, ``reward_target``
        [B,T], the rewards' z-scores, which the reward head then predicts instead of the raw reward."""
        carry, extra = list(carry[:len(self.blocks)]), list(carry[len(self.blocks):])
        zscore = None
        if self.reward_zscore:
            zscore, stats = reward_zscores(batch["reward"], batch["action"] < self.action_embed.num_embeddings - 1,
                                           extra.pop())
        x = self.embed(batch, zscore)
        new_carry = []
        if self.token_conv is not None:
            x, conv_state = self.token_conv(x, extra.pop())
        apply = nnx.remat(Block.__call__) if self.remat else Block.__call__
        keys = [None] * len(self.blocks) if dropout_key is None else jax.random.split(dropout_key, len(self.blocks))
        for block, state, key in zip(self.blocks, carry, keys):
            x, state = apply(block, x, state, key)
            new_carry.append(state)
        if self.token_conv is not None:
            new_carry.append(conv_state)
        if self.reward_zscore:
            new_carry.append(stats)
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
        return outputs, tuple(new_carry)


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


def reset_carry(carry: tuple, reset):
    """Zeroes the carried state of rows where ``reset`` [B] is true (a zero state is a fresh one)."""

    def zero_rows(x):
        mask = reset.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(mask, jnp.zeros_like(x), x)

    return jax.tree.map(zero_rows, carry)
