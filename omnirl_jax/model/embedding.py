"""A step's fields as tokens: the embedding tables of ``OmniRL`` and the options that shape them.

Token order per step t: prompt, observation, tag, behaviour action, reward (each embedding plus a
token-type embedding; the reward through a linear map of the scalar), or with
``ModelConfig.fused_step`` three tokens: prompt + observation + tag, action, reward. Options: the
action token also carries its step's observation, through the observation embedding and an
embedding of the (observation, action) pair (``pair_embed``); the reward token its observation
and the pair scaled by the reward (``reward_pair``); the reward token also gets the reward's
z-score within its sequence (``reward_zscore``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from omnirl_jax.config import ModelConfig
from omnirl_jax.data.schema import TAGS
from omnirl_jax.model.layers import Dense


class StepEmbedding(nnx.Module):
    """The tables and ``embed``. ``OmniRL`` is one (a base class, not an attribute), so the tables
    keep their parameter paths (``obs_embed``, ...) in checkpoints and exported models."""

    def __init__(self, cfg: ModelConfig, *, n_states: int, n_actions: int, rngs: nnx.Rngs):
        d = cfg.d_model
        embed = lambda n: nnx.Embed(n, d, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
        self.prompt_embed, self.tag_embed = embed(len(TAGS)), embed(len(TAGS))
        self.obs_embed = embed(n_states)
        self.action_embed = embed(n_actions + 1)  # + the null action
        self.reward_embed = Dense(2 if cfg.reward_zscore else 1, d, rngs=rngs)
        self.fused_step, self.tokens_per_step = cfg.fused_step, cfg.tokens_per_step
        self.type_embed = embed(cfg.tokens_per_step)
        pairs = n_states * (n_actions + 1)
        self.pair_embed = embed(pairs) if cfg.pair_embed else None
        self.reward_pair_embed = embed(pairs) if cfg.reward_pair else None
        self.zscore_pair_embed = embed(pairs) if cfg.reward_pair and cfg.reward_zscore else None

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
