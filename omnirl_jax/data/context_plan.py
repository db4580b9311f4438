"""The context plan: a label computed from a sequence's own records, what a learner could know.

``plan[t]`` is the greedy action, in observation ``obs[t]``, of value iteration on the empirical
model of the records before step ``t``: per tried (observation, action) pair its mean reward and
its next-observation frequencies; untried pairs are never chosen, a state with nothing tried is
worth 0 (terminal observations are such states), and the null action (``n_actions``) is the plan
where nothing has been tried in ``obs[t]`` yet. The discount is the label oracle's, so where the
context has seen enough the plan equals the label: on the 8-state ladder rung's data (discount
0.994, 64 sequences) on 0.46 / 0.67 / 0.73 / 0.80 of labelled steps 0-128 / 128-256 / 256-512 /
512-1024.

Why: the label (the oracle's action in the true task) is what the policy must finally learn, but
at 8 states it stays at ln 5 for 3000 training steps; planning on the context, the skill the label
needs, is learned first and carries into the label (``LossConfig.plan_steps``): on the 8-state
rung, 1000 steps on the plan then the label reach a label loss of 1.47-1.49 by step 1250 (1.420
at 3000) where the label alone is still at 1.611 at 1250, with the world-model terms off and
256-step sequences (with either not so, the plan itself stays at chance for 1000 steps; issue
23, docs/experiments.md).

Records and the model: a step with a real action adds its reward to its pair; unless it ends its
episode (``episode_end``: truncated, so the next record is a reset) its transition lands at the
next record's observation, which may be in the next chunk: the pending transition is carried.
Value iteration runs ``PLAN_SWEEPS`` in-place sweeps per step, warm-started from the previous
step's values (the model changes by one record per step); its cost per step is ``PLAN_SWEEPS *
S * A * S`` (8 states: 6,400 multiply-adds), so it is computed only where a config asks for it.
Bandits (no transitions) get the best mean reward so far.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

PLAN_SWEEPS = 20
"""Value-iteration sweeps per step (warm-started: the values stay near convergence)."""


class PlanState(NamedTuple):
    """Per-sequence empirical model, carried from chunk to chunk."""

    moves: np.ndarray  # float64 [N, S, A, S] transition counts
    n_moves: np.ndarray  # float64 [N, S, A] their sums
    n_paid: np.ndarray  # float64 [N, S, A] rewarded visits
    paid: np.ndarray  # float64 [N, S, A] reward sums
    value: np.ndarray  # float64 [N, S]
    pending: np.ndarray  # int64 [N, 2] (observation, action) whose next observation is the next record's, or (-1, -1)


def allocate(n_seq: int, n_obs: int, n_actions: int) -> PlanState:
    pairs = np.zeros((n_seq, n_obs, n_actions))
    return PlanState(np.zeros((n_seq, n_obs, n_actions, n_obs)), pairs.copy(), pairs.copy(), pairs.copy(),
                     np.zeros((n_seq, n_obs)), np.full((n_seq, 2), -1, np.int64))


@njit(cache=True)
def _q(st, j, s, a, gamma):
    mean = st.paid[j, s, a] / st.n_paid[j, s, a]
    if st.n_moves[j, s, a] == 0:
        return mean
    ahead = 0.0
    for n in range(st.value.shape[1]):
        ahead += st.moves[j, s, a, n] * st.value[j, n]
    return mean + gamma * ahead / st.n_moves[j, s, a]


@njit(cache=True)
def label_chunk(st, obs, action, reward, episode_end, gamma, out):
    """Writes ``plan`` (module doc) of a chunk of records ``[N, T]`` into ``out`` and advances ``st``."""
    n_obs, null = st.value.shape[1], st.paid.shape[2]
    for j in range(obs.shape[0]):
        for t in range(obs.shape[1]):
            o = obs[j, t]
            if st.pending[j, 0] >= 0:
                s, a = st.pending[j, 0], st.pending[j, 1]
                st.moves[j, s, a, o] += 1.0
                st.n_moves[j, s, a] += 1.0
                st.pending[j, 0] = -1
            for _ in range(PLAN_SWEEPS):
                for s in range(n_obs):
                    best = 0.0
                    tried = False
                    for a in range(null):
                        if st.n_paid[j, s, a] > 0:
                            q = _q(st, j, s, a, gamma)
                            if not tried or q > best:
                                best, tried = q, True
                    st.value[j, s] = best
            plan, best = null, 0.0
            for a in range(null):
                if st.n_paid[j, o, a] > 0:
                    q = _q(st, j, o, a, gamma)
                    if plan == null or q > best:  # ties go to the lowest action id
                        plan, best = a, q
            out[j, t] = plan
            a = action[j, t]
            if a < null:
                st.n_paid[j, o, a] += 1.0
                st.paid[j, o, a] += reward[j, t]
                if not episode_end[j, t]:
                    st.pending[j, 0], st.pending[j, 1] = o, a
