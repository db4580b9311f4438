"""Decoupled policy distillation plus world-model losses, with context warm-up weighting.

The policy is trained against the *label* action (what the reference policy would do), not the
behaviour action, so any behaviour data teaches the optimal in-context policy. The world-model
terms predict the next observation (cross-entropy) and the reward (MSE; its z-score in its sequence
when the model has ``reward_zscore``, so the target is on one scale in every task); an optional auxiliary
term (``LossConfig.behaviour``) predicts the behaviour action from a head of its own. Every step
is weighted by the context warm-up, which depends on the step's absolute position in its sequence
(``offset + t``), so it is the same whichever segment the step lands in and needs no buffer.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from omnirl_jax.config import LossConfig


def warmup_weights(offset, segment_len: int, warmup_steps: int, start: float):
    """[B] segment offsets -> [B, T] weights: linear from ``start`` at step 0 to 1 at ``warmup_steps``."""
    position = offset[:, None].astype(jnp.float32) + jnp.arange(segment_len, dtype=jnp.float32)[None, :]
    if warmup_steps == 0:
        return jnp.ones_like(position)
    return start + (1.0 - start) * jnp.minimum(position / warmup_steps, 1.0)


def _weighted_mean(values, weights):
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def _action_ce(logits, actions, n_actions: int):
    """Cross-entropy against action ids; the null action (masked by the caller's weights) is
    clamped to a valid index."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.minimum(actions, n_actions - 1))


def compute_losses(outputs: dict, batch: dict, cfg: LossConfig, n_actions: int):
    """Returns (total loss, metrics dict of scalars).

    The policy term skips steps whose label is the null action (episode ends); the world-model
    terms skip steps whose behaviour action is null (the next observation there is a reset).
    Each term is a warm-up-weighted mean over its valid steps.
    """
    t = batch["obs"].shape[1]
    weights = warmup_weights(batch["offset"], t, cfg.warmup_steps, cfg.warmup_start)
    policy_w = weights * (batch["label"] != n_actions)
    world_w = weights * (batch["action"] != n_actions)

    policy_ce = _action_ce(outputs["policy_logits"], batch["label"], n_actions)
    next_ce = optax.softmax_cross_entropy_with_integer_labels(
        outputs["next_obs_logits"].astype(jnp.float32), batch["next_obs"]
    )
    reward_se = jnp.square(outputs["reward"].astype(jnp.float32) - outputs.get("reward_target", batch["reward"]))

    policy_loss = _weighted_mean(policy_ce, policy_w)
    next_state_loss = _weighted_mean(next_ce, world_w)
    reward_loss = _weighted_mean(reward_se, world_w)
    total = cfg.policy * policy_loss + cfg.next_state * next_state_loss + cfg.reward * reward_loss
    extra = {}
    if cfg.behaviour > 0:
        behaviour_ce = _action_ce(outputs["behaviour_logits"], batch["action"], n_actions)
        extra["behaviour_loss"] = _weighted_mean(behaviour_ce, world_w)
        total = total + cfg.behaviour * extra["behaviour_loss"]
    policy_hit = jnp.argmax(outputs["policy_logits"], axis=-1) == batch["label"]
    metrics = {
        "loss": total,
        "policy_loss": policy_loss,
        "next_state_loss": next_state_loss,
        "reward_loss": reward_loss,
        "policy_accuracy": _weighted_mean(policy_hit, policy_w > 0),
        **extra,
    }
    return total, metrics
