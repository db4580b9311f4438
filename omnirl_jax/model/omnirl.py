"""The OmniRL model: a step's tokens, a causal GLA (or sliding-window) backbone, three heads.

Token order per step t: prompt, observation, tag, behaviour action, reward (each embedding plus a
token-type embedding; the reward through a linear map of the scalar), or with
``ModelConfig.fused_step`` three tokens: prompt + observation + tag, action, reward. Options:
the action token also carries its step's observation, through the observation embedding and an
embedding of the (observation, action) pair (``pair_embed``); the reward token its observation
and the pair scaled by the reward (``reward_pair``); a causal convolution mixes neighbouring
tokens (``token_conv``). The policy head reads the observation token (it has seen the prompt and
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
        self.reward_embed = Dense(1, d, rngs=rngs)
        self.fused_step, self.tokens_per_step = cfg.fused_step, cfg.tokens_per_step
        # Positions of the observation and action tokens within a step's token group.
        self.obs_at, self.action_at = (0, 1) if cfg.fused_step else (1, 3)
        self.type_embed = embed(cfg.tokens_per_step)
        self.pair_embed = embed(n_states * (n_actions + 1)) if cfg.pair_embed else None
        self.reward_pair_embed = embed(n_states * (n_actions + 1)) if cfg.reward_pair else None
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
        """The recurrent state of every block (then of the token convolution, if any), for
        ``batch`` fresh sequences."""
        conv = () if self.token_conv is None else (self.token_conv.init_state(batch),)
        return tuple(block.mixer.init_state(batch) for block in self.blocks) + conv

    def embed(self, batch: dict):
        """[B, T] step fields -> [B, T * tokens per step, d] token embeddings in step-major order."""
        obs, action = self.obs_embed(batch["obs"]), self.action_embed(batch["action"])
        reward = batch["reward"][..., None].astype(jnp.float32)
        pair = batch["obs"] * self.action_embed.num_embeddings + batch["action"]
        if self.pair_embed is not None:
            action = action + obs + self.pair_embed(pair)
        reward_token = self.reward_embed(reward)
        if self.reward_pair_embed is not None:
            reward_token = reward_token + obs + reward * self.reward_pair_embed(pair)
        prompt, tag = self.prompt_embed(batch["prompt"]), self.tag_embed(batch["tag"])
        group = [prompt + obs + tag] if self.fused_step else [prompt, obs, tag]
        tokens = jnp.stack(group + [action, reward_token], axis=2) + self.type_embed.embedding[...]
        b, t = batch["obs"].shape
        return tokens.reshape(b, t * self.tokens_per_step, -1)

    def __call__(self, batch: dict, carry: tuple, *, dropout_key=None):
        """Returns ({policy_logits [B,T,A], next_obs_logits [B,T,S], reward [B,T]}, new carry), and
        ``behaviour_logits`` [B,T,A] with a behaviour head."""
        x = self.embed(batch)
        new_carry = []
        if self.token_conv is not None:
            x, conv_state = self.token_conv(x, carry[-1])
        apply = nnx.remat(Block.__call__) if self.remat else Block.__call__
        keys = [None] * len(self.blocks) if dropout_key is None else jax.random.split(dropout_key, len(self.blocks))
        for block, state, key in zip(self.blocks, carry, keys):
            x, state = apply(block, x, state, key)
            new_carry.append(state)
        if self.token_conv is not None:
            new_carry.append(conv_state)
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
        return outputs, tuple(new_carry)


def reset_carry(carry: tuple, reset):
    """Zeroes the carried state of rows where ``reset`` [B] is true (a zero state is a fresh one)."""

    def zero_rows(x):
        mask = reset.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(mask, jnp.zeros_like(x), x)

    return jax.tree.map(zero_rows, carry)
