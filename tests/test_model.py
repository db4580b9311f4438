"""The OmniRL model: output shapes, causality of the token layout, segment-wise equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_batch
from flax import nnx

from omnirl_jax.config import ModelConfig
from omnirl_jax.model import OmniRL, reset_carry

N_STATES, N_ACTIONS = 12, 5


def make_model(**overrides):
    cfg = ModelConfig(**{"d_model": 32, "n_layers": 2, "n_heads": 4, "chunk_size": 16, **overrides})
    return OmniRL(cfg, n_states=N_STATES, n_actions=N_ACTIONS, rngs=nnx.Rngs(0))


def model_inputs(batch):
    return {k: jnp.asarray(batch[k]) for k in ("obs", "action", "reward", "prompt", "tag")}


@pytest.fixture(scope="module")
def batch():
    return model_inputs(random_batch(np.random.default_rng(0), batch_size=2, segment_len=24, n_states=N_STATES))


VARIANTS = {
    "gla": {"mixer": "gla"},
    "delta": {"mixer": "delta"},
    # Pair embedding, token convolution and a head width apart from d_model / n_heads.
    "gla-pair-conv": {"mixer": "gla", "pair_embed": True, "token_conv": 8, "head_dim": 12},
    # Three tokens per step, and the reward token carrying the reward-scaled pair.
    "gla-fused-reward-pair": {"mixer": "gla", "fused_step": True, "reward_pair": True, "token_conv": 4},
    # The bandit rung's layout: delta rule, pairs, reward z-scores carried across calls.
    "delta-reward-zscore": {"mixer": "delta", "fused_step": True, "pair_embed": True, "reward_pair": True,
                            "reward_zscore": True, "token_conv": 4},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def forward(request):
    model = make_model(**VARIANTS[request.param])
    if model.token_conv is not None:  # zero at init (identity): give it weights that mix tokens
        model.token_conv.weight[...] = jax.random.normal(jax.random.key(1), model.token_conv.weight.shape)
    graphdef, params = nnx.split(model)

    @jax.jit
    def apply(params, inputs, carry):
        return nnx.merge(graphdef, params)(inputs, carry)

    return model, lambda inputs, carry: apply(params, inputs, carry)


def test_output_shapes_and_dtypes(forward, batch):
    model, run = forward
    out, carry = run(batch, model.init_carry(2))
    assert out["policy_logits"].shape == (2, 24, N_ACTIONS)
    assert out["next_obs_logits"].shape == (2, 24, N_STATES)
    assert out["reward"].shape == (2, 24)
    assert ("reward_target" in out) == model.reward_zscore  # the reward head's target: z-scores
    if model.reward_zscore:
        from omnirl_jax.model.omnirl import reward_zscores
        z, _ = reward_zscores(batch["reward"], batch["action"] < N_ACTIONS, jnp.zeros((2, 3)))
        np.testing.assert_allclose(out["reward_target"], z, rtol=1e-6)
    assert jax.tree.structure(carry) == jax.tree.structure(model.init_carry(2))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(carry))


def test_tokens_per_step(forward, batch):
    model, _ = forward
    per_step = 3 if model.fused_step else 5
    zscore = jnp.zeros(batch["reward"].shape) if model.reward_zscore else None
    assert model.embed(batch, zscore).shape[:2] == (2, 24 * per_step)


def test_heads_see_only_what_they_should(forward, batch):
    model, run = forward
    carry = model.init_carry(2)
    base, _ = run(batch, carry)
    t = 10
    # The action at t reaches the world-model heads at t but not the policy at t.
    changed = dict(batch, action=batch["action"].at[:, t].set((batch["action"][:, t] + 1) % N_ACTIONS))
    out, _ = run(changed, carry)
    np.testing.assert_allclose(out["policy_logits"][:, : t + 1], base["policy_logits"][:, : t + 1], atol=1e-6)
    assert not np.allclose(out["reward"][:, t], base["reward"][:, t])
    # The reward at t reaches no head at t (nor before).
    changed = dict(batch, reward=batch["reward"].at[:, t].add(5.0))
    out, _ = run(changed, carry)
    for name in base.keys() - {"reward_target"}:  # the reward head's target is the rewards' z-score
        np.testing.assert_allclose(out[name][:, : t + 1], base[name][:, : t + 1], atol=1e-6)
    assert not np.allclose(out["policy_logits"][:, t + 1], base["policy_logits"][:, t + 1])
    # The observation at t reaches the policy at t.
    changed = dict(batch, obs=batch["obs"].at[:, t].set((batch["obs"][:, t] + 1) % N_STATES))
    out, _ = run(changed, carry)
    assert not np.allclose(out["policy_logits"][:, t], base["policy_logits"][:, t])


def test_segments_with_carry_equal_one_pass(forward, batch):
    model, run = forward
    whole, whole_carry = run(batch, model.init_carry(2))
    carry, parts = model.init_carry(2), []
    for lo, hi in [(0, 8), (8, 24)]:
        out, carry = run({k: v[:, lo:hi] for k, v in batch.items()}, carry)
        parts.append(out)
    for name in whole:
        np.testing.assert_allclose(jnp.concatenate([p[name] for p in parts], axis=1), whole[name], rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(whole_carry)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reset_carry_zeroes_only_reset_rows(forward, batch):
    model, run = forward
    _, carry = run(batch, model.init_carry(2))
    reset = reset_carry(carry, jnp.array([True, False]))
    for before, after in zip(jax.tree.leaves(carry), jax.tree.leaves(reset)):
        assert not np.any(after[0])
        np.testing.assert_array_equal(after[1], before[1])


def test_tied_queries_are_the_keys(batch):
    """``tied_qk``: no query projection; the model equals an untied one whose query projections
    are set to its key projections."""
    tied, untied = make_model(mixer="delta", tied_qk=True), make_model(mixer="delta")
    assert all(block.mixer.q_proj is None for block in tied.blocks)
    for block in untied.blocks:
        block.mixer.q_proj.kernel[...] = block.mixer.k_proj.kernel[...]
    path = lambda p: jax.tree_util.keystr(p)
    given = {path(p): x for p, x in jax.tree_util.tree_flatten_with_path(nnx.state(untied, nnx.Param))[0]}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.state(tied, nnx.Param))
    nnx.update(tied, jax.tree_util.tree_unflatten(treedef, [given[path(p)] for p, _ in leaves]))
    out_tied, _ = tied(batch, tied.init_carry(2))
    out_untied, _ = untied(batch, untied.init_carry(2))
    np.testing.assert_allclose(out_tied["policy_logits"], out_untied["policy_logits"], rtol=1e-5, atol=1e-5)


def test_reward_zscores_against_earlier_valid_rewards():
    from omnirl_jax.model.omnirl import ZSCORE_CLIP, ZSCORE_FLOOR, reward_zscores

    rng = np.random.default_rng(0)
    reward = rng.normal(1.0, 0.5, size=(2, 9)).astype(np.float32)
    valid = rng.random((2, 9)) > 0.3
    valid[:, 0] = True
    z, stats = reward_zscores(jnp.asarray(reward), jnp.asarray(valid), jnp.zeros((2, 3)))
    for b in range(2):
        for t in range(9):
            earlier = reward[b, :t][valid[b, :t]]
            if not valid[b, t] or earlier.size == 0:
                assert z[b, t] == 0.0
                continue
            want = np.clip((reward[b, t] - earlier.mean()) / np.sqrt(earlier.var() + ZSCORE_FLOOR ** 2), -ZSCORE_CLIP, ZSCORE_CLIP)
            np.testing.assert_allclose(z[b, t], want, rtol=1e-4, atol=1e-5)
        kept = reward[b][valid[b]]
        np.testing.assert_allclose(stats[b], [kept.size, kept.sum(), (kept ** 2).sum()], rtol=1e-5)
    # After one noiseless pull, a second arm 0.1 better or worse reads as the clip.
    z, _ = reward_zscores(jnp.array([[0.5, 0.6], [0.5, 0.4]]), jnp.ones((2, 2), bool), jnp.zeros((2, 3)))
    np.testing.assert_allclose(z, [[0.0, ZSCORE_CLIP], [0.0, -ZSCORE_CLIP]], atol=1e-4)


def test_remat_and_bf16_compute():
    inputs = model_inputs(random_batch(np.random.default_rng(1), batch_size=2, segment_len=16, n_states=N_STATES))

    def loss(model):
        out, _ = model(inputs, model.init_carry(2))
        return jnp.mean(out["reward"] ** 2) + jnp.mean(out["policy_logits"] ** 2)

    grads = [nnx.jit(nnx.grad(loss))(make_model(remat=remat, n_layers=1)) for remat in (True, False)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    bf16 = make_model(compute_dtype="bfloat16", n_layers=1)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    out, carry = nnx.jit(lambda m: m(inputs, m.init_carry(2)))(bf16)
    assert np.all(np.isfinite(out["policy_logits"])) and carry.blocks[0].dtype == jnp.float32


def test_behaviour_head_only_when_asked_and_at_the_policy_token(batch):
    assert "behaviour_logits" not in make_model()(batch, make_model().init_carry(2))[0]
    model = OmniRL(ModelConfig(d_model=32, n_layers=2, n_heads=4, chunk_size=16), n_states=N_STATES,
                   n_actions=N_ACTIONS, behaviour_head=True, rngs=nnx.Rngs(0))
    out, _ = model(batch, model.init_carry(2))
    assert out["behaviour_logits"].shape == (2, 24, N_ACTIONS)
    # Like the policy, it has not seen the action it predicts.
    t = 10
    changed = dict(batch, action=batch["action"].at[:, t].set((batch["action"][:, t] + 1) % N_ACTIONS))
    np.testing.assert_allclose(model(changed, model.init_carry(2))[0]["behaviour_logits"][:, : t + 1],
                               out["behaviour_logits"][:, : t + 1], atol=1e-6)


def test_token_conv_is_a_causal_depthwise_convolution():
    from omnirl_jax.model.layers import TokenConv

    conv = TokenConv(3, taps=4)
    w = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    conv.weight[...] = jnp.asarray(w)
    x = np.random.default_rng(1).normal(size=(2, 7, 3)).astype(np.float32)
    expected = x.copy()
    for t in range(7):
        for j in range(1, 4):
            if t - j >= 0:
                expected[:, t] += w[j - 1] * x[:, t - j]
    y, state = conv(jnp.asarray(x), conv.init_state(2))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state, x[:, -3:])


def test_dense_on_flattened_tokens_equals_linear():
    """``Dense`` flattens [B, L, d] to one token axis for speed; values and gradients stay those
    of ``nnx.Linear`` with the same parameters."""
    from omnirl_jax.model.layers import Dense

    dense = Dense(6, 5, rngs=nnx.Rngs(0))
    linear = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 7, 6))
    assert dense(x).shape == (3, 7, 5)
    np.testing.assert_allclose(dense(x), linear(x), rtol=1e-6, atol=1e-6)
    grad = lambda m: nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(m)
    np.testing.assert_allclose(grad(dense).kernel[...], grad(linear).kernel[...], rtol=1e-5, atol=1e-6)
