"""The data contract between the generator, the shards, the loader and the trainer.

A *sequence* is one AnyMDP task played for ``seq_len`` steps, episodes back to back. Step ``t``
records what the agent saw and did: observation ``obs[t]``, behaviour action ``action[t]``
(executed), reward ``reward[t]``, the label action ``label[t]`` (what the label policy, normally
``opt3``, would do in that state), ``prompt[t]`` (id of the label policy) and ``tag[t]`` (which kind
of policy produced ``action[t]``, or ``unk`` when hidden). When an episode ends, the terminal
observation is recorded as its own step with the null action ``n_actions`` and reward 0; its
label is also the null action (no policy loss there); a bandit (one state, every pull a one-step
episode) has no terminal records, its terminal observation being the only observation. ``next_obs[t]`` is ``obs[t + 1]`` (the
world-model target); it is meaningless where ``action[t]`` is null (the next step is a reset).
``plan[t]`` is a second label, the context plan (``omnirl_jax.data.context_plan``), or the null
action where the generator does not compute it (``GeneratorConfig.plan_label``).

The loader yields batches of segments: every array has shape ``[batch, segment_len]`` except the
per-row fields ``offset`` (absolute step of the segment's first step within its sequence, for
the context warm-up weight) and ``reset`` (True where the row starts a new sequence, so the
trainer zeroes that row's recurrent state).
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

TAGS = ("opt0", "opt1", "opt2", "opt3", "exp1", "exp2", "rnd", "unk")
"""Behaviour tags: oracle at gamma index k (opt0..opt3), model-based RL (exp1), Q-learning
(exp2), random (rnd), hidden (unk). Prompts use the same ids (the label policy is an oracle)."""
TAG_ID = {name: i for i, name in enumerate(TAGS)}
UNK_TAG = TAG_ID["unk"]

STEP_FIELDS = {
    "obs": np.int32,
    "action": np.int32,
    "label": np.int32,
    "reward": np.float32,
    "prompt": np.int32,
    "tag": np.int32,
    "next_obs": np.int32,
    "plan": np.int32,
}
"""Per-step batch fields and their dtypes in a loader batch, each ``[batch, segment_len]``."""

ROW_FIELDS = {"offset": np.int64, "reset": np.bool_}
"""Per-row batch fields, each ``[batch]``."""


@register_jitable
def terminal_record_follows(terminated, max_steps):
    """Whether a step's arrival is recorded next as its own terminal record (module doc): on
    termination, except in a one-step task (``max_steps == 1``, a bandit). The one home of the
    rule: the Numba generator and the JAX rollouts call it alike."""
    return terminated & (max_steps > 1)
