"""Decoupled policy distillation loss: warm-up weights, masking, term weights."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_batch

from omnirl_jax.config import LossConfig
from omnirl_jax.losses import compute_losses, warmup_weights

N_STATES, N_ACTIONS = 10, 5


def test_warmup_ramps_from_absolute_step():
    w = warmup_weights(jnp.array([0]), 600, 512, 1e-3)[0]
    assert w[0] == pytest.approx(1e-3)
    assert w[256] == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert np.all(w[512:] == 1.0) and np.all(np.diff(w[:513]) > 0)
    # A segment starting at step 256 gets the same weights as that part of one long pass.
    np.testing.assert_allclose(warmup_weights(jnp.array([256]), 100, 512, 1e-3)[0], w[256:356])
    # Far into a 512k-step sequence: no buffer to run off, weight 1.
    assert np.all(warmup_weights(jnp.array([524_000]), 288, 512, 1e-3) == 1.0)


def batch_and_outputs(seed=0, offset=0):
    rng = np.random.default_rng(seed)
    batch = {k: jnp.asarray(v) for k, v in random_batch(rng, batch_size=3, segment_len=40, n_states=N_STATES, offset=offset).items()}
    outputs = {
        "policy_logits": jnp.asarray(rng.normal(size=(3, 40, N_ACTIONS)), jnp.float32),
        "next_obs_logits": jnp.asarray(rng.normal(size=(3, 40, N_STATES)), jnp.float32),
        "reward": jnp.asarray(rng.normal(size=(3, 40)), jnp.float32),
    }
    return batch, outputs


def test_terms_match_a_direct_computation():
    batch, outputs = batch_and_outputs(offset=100)
    cfg = LossConfig()
    total, metrics = compute_losses(outputs, batch, cfg, N_ACTIONS)
    label, action = np.asarray(batch["label"]), np.asarray(batch["action"])
    assert (label == N_ACTIONS).any() and (action == N_ACTIONS).any()  # the test data has episode ends
    w = 1e-3 + (1 - 1e-3) * (100 + np.arange(40)) / 512
    w = np.broadcast_to(w, label.shape)
    pw, ww = w * (label != N_ACTIONS), w * (action != N_ACTIONS)
    ce = optax.softmax_cross_entropy_with_integer_labels
    policy = float(np.sum(ce(outputs["policy_logits"], np.minimum(label, N_ACTIONS - 1)) * pw) / pw.sum())
    next_state = float(np.sum(ce(outputs["next_obs_logits"], batch["next_obs"]) * ww) / ww.sum())
    reward = float(np.sum((np.asarray(outputs["reward"]) - np.asarray(batch["reward"])) ** 2 * ww) / ww.sum())
    assert float(metrics["policy_loss"]) == pytest.approx(policy, rel=1e-5)
    assert float(metrics["next_state_loss"]) == pytest.approx(next_state, rel=1e-5)
    assert float(metrics["reward_loss"]) == pytest.approx(reward, rel=1e-5)
    assert float(total) == pytest.approx(0.2 * policy + 0.4 * next_state + 0.4 * reward, rel=1e-5)
    only_policy, _ = compute_losses(outputs, batch, LossConfig(policy=1.0, next_state=0.0, reward=0.0), N_ACTIONS)
    assert float(only_policy) == pytest.approx(policy, rel=1e-5)


def test_reward_term_takes_the_model_reward_target():
    """A model with reward z-scores gives its own reward target (the z-scores): the reward term is
    measured against it, not the raw reward."""
    batch, outputs = batch_and_outputs(seed=2)
    target = jnp.asarray(np.random.default_rng(3).normal(size=(3, 40)), jnp.float32)
    _, raw = compute_losses(outputs, batch, LossConfig(), N_ACTIONS)
    _, scored = compute_losses(dict(outputs, reward_target=target), batch, LossConfig(), N_ACTIONS)
    _, exact = compute_losses(dict(outputs, reward=target, reward_target=target), batch, LossConfig(), N_ACTIONS)
    assert float(exact["reward_loss"]) == 0.0 and float(scored["reward_loss"]) != float(raw["reward_loss"])


def test_null_steps_do_not_contribute():
    batch, outputs = batch_and_outputs(seed=1)
    _, base = compute_losses(outputs, batch, LossConfig(), N_ACTIONS)
    null_label = (batch["label"] == N_ACTIONS)[..., None]
    null_action = batch["action"] == N_ACTIONS
    changed = {
        "policy_logits": jnp.where(null_label, 100.0, outputs["policy_logits"]),
        "next_obs_logits": jnp.where(null_action[..., None], -100.0, outputs["next_obs_logits"]),
        "reward": jnp.where(null_action, 1e3, outputs["reward"]),
    }
    _, metrics = compute_losses(changed, batch, LossConfig(), N_ACTIONS)
    for name in ("policy_loss", "next_state_loss", "reward_loss"):
        assert float(metrics[name]) == pytest.approx(float(base[name]), rel=1e-6)


def test_policy_is_trained_on_label_not_behaviour_action():
    batch, outputs = batch_and_outputs(seed=2)
    label = np.asarray(batch["label"])
    perfect = jnp.asarray(np.eye(N_ACTIONS)[np.minimum(label, N_ACTIONS - 1)] * 50.0, jnp.float32)
    _, metrics = compute_losses(dict(outputs, policy_logits=perfect), batch, LossConfig(), N_ACTIONS)
    assert metrics["policy_loss"] < 1e-6 and float(metrics["policy_accuracy"]) == pytest.approx(1.0)


def test_behaviour_term_is_the_behaviour_action_cross_entropy():
    batch, outputs = batch_and_outputs(offset=600, seed=3)
    action = np.asarray(batch["action"])
    logits = jnp.asarray(np.random.default_rng(4).normal(size=outputs["policy_logits"].shape), jnp.float32)
    outputs = dict(outputs, behaviour_logits=logits)
    cfg = LossConfig(behaviour=0.5)
    total, metrics = compute_losses(outputs, batch, cfg, N_ACTIONS)
    real = action != N_ACTIONS  # past the warm-up every real step weighs 1; null actions none
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, np.minimum(action, N_ACTIONS - 1))
    expected = float(np.asarray(ce)[real].mean())
    assert float(metrics["behaviour_loss"]) == pytest.approx(expected, rel=1e-5)
    without, base = compute_losses(outputs, batch, LossConfig(), N_ACTIONS)
    assert "behaviour_loss" not in base
    assert float(total) == pytest.approx(float(without) + 0.5 * expected, rel=1e-5)
