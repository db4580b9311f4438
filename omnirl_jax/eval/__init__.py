"""Evaluation: held-out task suites played in context by a checkpoint and by baselines.

``suites`` (which tasks; ``gym_adapter`` converts Gymnasium's toy-text tasks) -> ``rollout`` (model
and env, ``anymdp_gym.jax.dynamics``, in one ``lax.scan``) -> ``baselines`` (reference returns, classic
learners) -> ``evaluate`` (``omnirl-eval``: curves, tables, plots; ``in_training`` runs it during
training). Tasks with no table play through ``live`` (Gymnasium envs stepped in lockstep, the model
through ``omnirl_jax.agent``); ``restore`` loads a checkpoint or an exported model for both.
"""
