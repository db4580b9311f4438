"""Evaluation: held-out task suites played in context by a checkpoint and by baselines.

``suites`` (which tasks) -> ``env_jax`` and ``gym_adapter`` (their dynamics in JAX) ->
``rollout`` (model and env in one ``lax.scan``) -> ``baselines`` (reference returns, classic
learners) -> ``evaluate`` (``omnirl-eval``: curves, tables, plots). Tasks with no table play
through ``live`` (Gymnasium envs stepped in lockstep, the model through
``omnirl_jax.agent``); ``restore`` loads a checkpoint for both.
"""
