"""Behaviour policies of the data generator, compiled with Numba over a batch of sequences.

Every sequence ``j`` of a batch owns one agent: the oracles of its task, a Q-learner, a count
model, a drifting softmax policy, its random hyper-parameters and its own SplitMix64 stream
``agent_rng[j]``. The learning rules are the kernels of ``anymdp_gym.solvers`` (the code the
single-env solver classes run), applied to views of the batch arrays.

Policies (``POLICY_NAMES``; weights in ``GeneratorConfig.policy_weights``) and their tags:

* ``opt0``..``opt3``: greedy in Q* at gamma 0.0, 0.5, 0.93, 0.994; tag ``opt<k>``.
* ``noisy_oracle``: an oracle ``opt<k>`` (k uniform per sequence) replaced by a uniformly random
  action with a decaying probability; tag ``opt<k>``, or ``rnd`` on a noise step.
* ``qlearning``: tabular Q-learning, alpha = ``q_alpha`` or ``q_alpha * Exponential(1)``,
  gamma uniform in ``q_gamma_range``, decaying epsilon-greedy noise; tag ``exp2``.
* ``mbrl``: count model with optimism ``mbrl_c`` (see ``anymdp_gym.solvers``), gamma uniform in
  ``mbrl_gamma_range``, decaying noise; tag ``exp1``. It plans (``mbrl_sweeps`` warm-started
  sweeps) at the start of an episode it acts in, once at least ``n_active`` steps have passed
  since its last plan: short episodes share a plan, so planning costs O(A x observed row span)
  per step whatever the episode lengths.
* ``mbrl_oracle``: ``mbrl`` that hands each step to an oracle ``opt<k>`` with probability
  ``1 - 0.5 ** (t / halflife)``, rising along the sequence; tag of the component that acted.
* ``random_drift``: a softmax policy per state, logits ``N(0, logit_scale^2)`` at the start;
  each time it acts in a state, one random logit of that state takes a uniform step of std
  ``drift`` (a uniform step costs one random number; the walk is what matters, not its shape).
  Tag ``rnd``.

Decisions where the spec is silent (as we would want them as RL researchers):

* Learners learn from every transition of their sequence, whichever policy acted (Q-learning
  and the count model are off-policy), so a redraw to a learner continues from all the
  experience so far; a learner whose policies have weight 0 is skipped (no cost).
* Noise and hand-off schedules run on sequence time: each halves every ``halflife`` steps, with
  ``halflife`` log-uniform in ``halflife_range`` and initial noise uniform in ``noise_range``,
  drawn per sequence and per policy.
* Learners index internal states. For an MDP the observation id is a bijection of the state, so
  they learn exactly what an observation-indexed learner learns: actions tie-break by action
  index, planning sweeps states in observation-id order, and a count row ``(s, a)`` is stored over
  the task's transition window only because no other next state can ever be counted (storage,
  not knowledge). The generator therefore serves MDP families (AnyMDP, GARNET).

Inside a chunk the generator keeps a sequence's changing scalars (policy, tag hiding, noise
schedule) in locals, since stores into the batch arrays would force reloads, and takes the
sequence's views once: ``act`` reads them as an ``Agent`` bundle (as fast as loose arrays,
measured), ``learn`` one by one (through a bundle it slowed generation by 10-25 %, measured:
see ``solvers.model_update``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from anymdp_gym.random_stream import normal, uniform
from anymdp_gym.planning import row_windows
from anymdp_gym.solvers import (
    argmax_row,
    fires,
    CountModel,
    halving_factor,
    model_plan,
    model_update,
    q_learning_update,
    random_action,
)
from omnirl_jax.data.schema import TAG_ID

POLICY_NAMES = ("opt0", "opt1", "opt2", "opt3", "noisy_oracle", "qlearning", "mbrl", "mbrl_oracle", "random_drift")
POLICY_ID = {name: i for i, name in enumerate(POLICY_NAMES)}
ORACLE_GAMMAS = (0.0, 0.5, 0.93, 0.994)
"""Discounts of the oracles opt0..opt3 (spec section 2)."""

_NOISY, _QL, _MB, _MBO = (POLICY_ID[n] for n in ("noisy_oracle", "qlearning", "mbrl", "mbrl_oracle"))
_N_ORACLES = len(ORACLE_GAMMAS)
_TAG_EXP1, _TAG_EXP2, _TAG_RND, TAG_UNK = TAG_ID["exp1"], TAG_ID["exp2"], TAG_ID["rnd"], TAG_ID["unk"]
_SQRT3 = np.sqrt(3.0)
_WEIGHT_RANGE = 1e100  # drifting softmax weights are renormalised when they leave [1/R, R]


class PolicyParams(NamedTuple):
    """Batch-wide settings (from ``GeneratorConfig``), read by the compiled kernels."""

    weights_cdf: np.ndarray  # float64 [len(POLICY_NAMES)], cumulative, last = 1
    redraw_prob: float
    hide_sequence_prob: float
    hide_episode_prob: float
    label_oracle: int
    q_alpha: float
    q_alpha_exponential_prob: float
    q_gamma_lo: float
    q_gamma_hi: float
    mbrl_c: float
    mbrl_gamma_lo: float
    mbrl_gamma_hi: float
    mbrl_sweeps: int
    noise_lo: float
    noise_hi: float
    halflife_lo: float
    halflife_hi: float
    logit_scale: float
    drift_lo: float
    drift_hi: float
    learn_q: bool
    learn_model: bool


class BehaviourState(NamedTuple):
    """Per-sequence agent state (axis 0 = sequence), carried across generator chunks."""

    agent_rng: np.ndarray  # uint64 [N]
    policy: np.ndarray  # int64 [N] current behaviour policy id
    hide_sequence: np.ndarray  # bool [N]
    hide_episode: np.ndarray  # bool [N]
    since_plan: np.ndarray  # int64 [N] steps since the model's last plan
    schedule: np.ndarray  # float64 [N, 4] noise of noisy_oracle, qlearning, mbrl; mbrl_oracle keep prob
    decay: np.ndarray  # float64 [N, 4] per-step factors of ``schedule``
    oracle: np.ndarray  # uint8 [N, 4, n] greedy action of opt0..opt3 per internal state
    noisy_oracle: np.ndarray  # int64 [N] oracle index of noisy_oracle
    mix_oracle: np.ndarray  # int64 [N] oracle index of mbrl_oracle
    q: np.ndarray  # float32 [N, n, A]
    q_alpha: np.ndarray  # float64 [N]
    q_gamma: np.ndarray  # float64 [N]
    counts: np.ndarray  # int32 [N, n, A, W] next-state counts over each row's window
    n_sa: np.ndarray  # int32 [N, n, A]
    r_sum: np.ndarray  # float64 [N, n, A]
    seen_lo: np.ndarray  # int32 [N, n, A]
    seen_hi: np.ndarray  # int32 [N, n, A]
    terminal_seen: np.ndarray  # bool [N, n]
    r_max: np.ndarray  # float64 [N, 1]
    values: np.ndarray  # float64 [N, n]
    greedy: np.ndarray  # int64 [N, n] greedy action of the model
    m_gamma: np.ndarray  # float64 [N]
    order: np.ndarray  # int64 [N, n] internal states by observation id (planning order)
    window_lo: np.ndarray  # int32 [N, n, A] first next state of each transition row's window
    n_active: np.ndarray  # int64 [N]
    weights: np.ndarray  # float64 [N, n, A] exp(logits) of random_drift
    drift: np.ndarray  # float64 [N]


class Agent(NamedTuple):
    """Sequence ``j``'s arrays and fixed draws that ``act`` reads, as views into a
    ``BehaviourState`` taken once per chunk."""

    oracle: np.ndarray  # uint8 [4, n]
    q: np.ndarray  # float32 [n, A]
    greedy: np.ndarray  # int64 [n] greedy action of the count model
    weights: np.ndarray  # float64 [n, A]
    noisy_oracle: int
    mix_oracle: int
    drift: float


def allocate(n_seq: int, n: int, n_actions: int, width: int) -> BehaviourState:
    """Empty agent state for ``n_seq`` sequences of up to ``n`` states and row windows of ``width``.

    The caller fills ``agent_rng`` and each task's facts (``fill_task``), then calls
    ``init_sequence``. Memory is dominated by ``counts``: ``4 * n * n_actions * width`` bytes per
    sequence.
    """
    shape = (n_seq, n, n_actions)
    return BehaviourState(
        agent_rng=np.zeros(n_seq, np.uint64),
        policy=np.zeros(n_seq, np.int64),
        hide_sequence=np.zeros(n_seq, np.bool_),
        hide_episode=np.zeros(n_seq, np.bool_),
        since_plan=np.zeros(n_seq, np.int64),
        schedule=np.zeros((n_seq, 4)),
        decay=np.ones((n_seq, 4)),
        oracle=np.zeros((n_seq, _N_ORACLES, n), np.uint8),
        noisy_oracle=np.zeros(n_seq, np.int64),
        mix_oracle=np.zeros(n_seq, np.int64),
        q=np.zeros(shape, np.float32),
        q_alpha=np.zeros(n_seq),
        q_gamma=np.zeros(n_seq),
        counts=np.zeros(shape + (width,), np.int32),
        n_sa=np.zeros(shape, np.int32),
        r_sum=np.zeros(shape),
        seen_lo=np.full(shape, width, np.int32),
        seen_hi=np.zeros(shape, np.int32),
        terminal_seen=np.zeros((n_seq, n), np.bool_),
        r_max=np.full((n_seq, 1), -np.inf),
        values=np.zeros((n_seq, n)),
        greedy=np.zeros((n_seq, n), np.int64),
        m_gamma=np.zeros(n_seq),
        order=np.zeros((n_seq, n), np.int64),
        window_lo=np.zeros(shape, np.int32),
        n_active=np.zeros(n_seq, np.int64),
        weights=np.ones(shape),
        drift=np.zeros(n_seq),
    )


def fill_task(st: BehaviourState, j: int, task, oracle_actions: np.ndarray) -> None:
    """Write task ``j``'s facts: oracle actions ``[4, n_active]``, planning order, row windows."""
    n = task.n_active
    st.oracle[j, :, :n] = oracle_actions
    st.order[j, :n] = np.argsort(task.state_mapping, kind="stable")  # observation-id order
    st.window_lo[j, :n] = row_windows(task.transition)[0]
    st.n_active[j] = n


def window_width(task) -> int:
    """Widest transition row window of ``task`` (the count model's row length)."""
    lo, hi = row_windows(task.transition)
    return int((hi - lo).max())


# --------------------------------------------------------------------------- compiled kernels
@njit(cache=True, inline="always")
def _between(lo, hi, rng, j):
    return lo + (hi - lo) * uniform(rng, j)


@njit(cache=True, inline="always")
def _halving_factor(prm, rng, j):
    """Per-step factor of a schedule whose half-life is log-uniform in the configured range."""
    return halving_factor(prm.halflife_lo * np.exp(uniform(rng, j) * np.log(prm.halflife_hi / prm.halflife_lo)))


@njit(cache=True, inline="always")
def schedule(st, j):
    """Sequence ``j``'s current ``(noise_noisy, noise_q, noise_model, keep)``."""
    x = st.schedule
    return x[j, 0], x[j, 1], x[j, 2], x[j, 3]


@njit(cache=True, inline="always")
def decay(st, j):
    """Sequence ``j``'s per-step schedule factors."""
    x = st.decay
    return x[j, 0], x[j, 1], x[j, 2], x[j, 3]


@njit(cache=True, inline="always")
def advance(sched, d):
    """The schedule one step later."""
    return sched[0] * d[0], sched[1] * d[1], sched[2] * d[2], sched[3] * d[3]


@njit(cache=True)
def init_sequence(st, prm, j):
    """Draw sequence ``j``'s hyper-parameters, whole-sequence tag hiding and first episode."""
    rng = st.agent_rng
    n_actions = st.weights.shape[2]
    for col in range(3):
        st.schedule[j, col] = _between(prm.noise_lo, prm.noise_hi, rng, j)
        st.decay[j, col] = _halving_factor(prm, rng, j)
    st.schedule[j, 3] = 1.0
    st.decay[j, 3] = _halving_factor(prm, rng, j)
    st.noisy_oracle[j] = random_action(_N_ORACLES, rng, j)
    st.mix_oracle[j] = random_action(_N_ORACLES, rng, j)
    alpha = prm.q_alpha
    if fires(prm.q_alpha_exponential_prob, rng, j):
        alpha *= -np.log1p(-uniform(rng, j))
    st.q_alpha[j] = min(alpha, 1.0)
    st.q_gamma[j] = _between(prm.q_gamma_lo, prm.q_gamma_hi, rng, j)
    st.m_gamma[j] = _between(prm.mbrl_gamma_lo, prm.mbrl_gamma_hi, rng, j)
    st.drift[j] = _between(prm.drift_lo, prm.drift_hi, rng, j)
    for s in range(st.n_active[j]):
        for a in range(n_actions):
            st.weights[j, s, a] = np.exp(prm.logit_scale * normal(rng, j))
    st.hide_sequence[j] = fires(prm.hide_sequence_prob, rng, j)
    policy, hide, since_plan = begin_episode(st, prm, j, True, 0, 1 << 62)
    st.policy[j], st.hide_episode[j], st.since_plan[j] = policy, hide, since_plan


@njit(cache=True)
def begin_episode(st, prm, j, first, policy, since_plan):
    """Episode start: redraw the policy (always on the first episode, else with ``redraw_prob``),
    draw the episode's tag hiding, plan if the model is due and about to act.

    Returns ``(policy, hide_episode, since_plan)``.
    """
    rng = st.agent_rng
    if first or fires(prm.redraw_prob, rng, j):
        u = uniform(rng, j)
        policy = 0
        while policy < prm.weights_cdf.shape[0] - 1 and u >= prm.weights_cdf[policy]:
            policy += 1
    hide = fires(prm.hide_episode_prob, rng, j)
    n = st.n_active[j]
    if (policy == _MB or policy == _MBO) and since_plan >= n:
        model = CountModel(st.counts[j], st.n_sa[j], st.r_sum[j], st.seen_lo[j], st.seen_hi[j], st.terminal_seen[j],
                           st.r_max[j], st.window_lo[j], st.values[j], st.greedy[j])
        model_plan(model, st.order[j, :n], st.m_gamma[j], prm.mbrl_c, prm.mbrl_sweeps)
        since_plan = 0
    return policy, hide, since_plan


@njit(cache=True, inline="always")
def _noisy(noise, greedy_action, n_actions, rng, j):
    """``(action, explored)``: the greedy action, or a uniformly random one with prob. ``noise``."""
    if fires(noise, rng, j):
        return random_action(n_actions, rng, j), True
    return np.int64(greedy_action), False


@njit(cache=True, inline="always")
def _drifting_softmax(weights, scale, rng, j):
    """Drift one random logit of ``weights = exp(logits)``, then sample an action from them."""
    n_actions = weights.shape[0]
    b = random_action(n_actions, rng, j)
    weights[b] *= np.exp(scale * _SQRT3 * (2.0 * uniform(rng, j) - 1.0))
    if not 1.0 / _WEIGHT_RANGE < weights[b] < _WEIGHT_RANGE:
        weights /= weights.max()
    total = 0.0
    for a in range(n_actions):
        total += weights[a]
    u = uniform(rng, j) * total
    for a in range(n_actions - 1):
        u -= weights[a]
        if u < 0.0:
            return a
    return n_actions - 1


@njit(cache=True, inline="always")
def act(ag, policy, s, sched, rng, j):
    """Behaviour action of agent ``ag`` (sequence ``j``) in internal state ``s`` and the tag of the
    component that chose it."""
    n_actions = ag.q.shape[1]
    oracle = ag.oracle
    if policy < _N_ORACLES:
        return np.int64(oracle[policy, s]), policy
    if policy == _NOISY:
        a, explored = _noisy(sched[0], oracle[ag.noisy_oracle, s], n_actions, rng, j)
        return a, _TAG_RND if explored else ag.noisy_oracle
    if policy == _QL:
        a, _ = _noisy(sched[1], argmax_row(ag.q[s]), n_actions, rng, j)
        return a, _TAG_EXP2
    if policy == _MBO and fires(1.0 - sched[3], rng, j):
        return np.int64(oracle[ag.mix_oracle, s]), ag.mix_oracle
    if policy == _MB or policy == _MBO:
        a, _ = _noisy(sched[2], ag.greedy[s], n_actions, rng, j)
        return a, _TAG_EXP1
    return np.int64(_drifting_softmax(ag.weights[s], ag.drift, rng, j)), _TAG_RND


@njit(cache=True, inline="always")
def learn(s, a, r, s2, terminated, bandit, learn_q, q, q_alpha, q_gamma,
          learn_model, counts, n_sa, r_sum, seen_lo, seen_hi, terminal_seen, r_max, window_lo):
    """Feed one transition to the learners whose arrays are passed (one by one, module doc); each
    is skipped when no policy of the mixture uses it.

    A ``bandit`` pull (``Task.one_step``) ends its episode wherever it lands. Q-learning's
    target is then the reward alone. The count model must not mark that state terminal, or
    planning never gives it a greedy action: the ``mbrl`` policies pulled arm 0 plus noise (best
    arm in 21 % of the last 64 of 256 pulls, 64 sequences; chance 20 %; now 81 %). Its values
    carry ``gamma v(state)``, the same for every arm, so its greedy arm is the best estimated mean
    plus bonus."""
    if learn_q:
        q_learning_update(q, s, a, r, s2, terminated, q_alpha, q_gamma)
    if learn_model:
        model_update(counts, n_sa, r_sum, seen_lo, seen_hi, terminal_seen, r_max,
                     s, a, s2 - window_lo[s, a], s2, r, terminated and not bandit)
