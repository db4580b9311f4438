"""Sequence generation: tasks played by mixtures of behaviour policies, labelled by an oracle.

``SequenceGenerator(config, seed, sequence_ids)`` produces sequences chunk by chunk
(``run(n_steps)``), carrying env and learner state between calls, so a 512k-step sequence needs
memory for one chunk only. Sequence ``j`` depends on ``(seed, sequence_ids[j])`` alone: its task
and its two random streams (env, agent) come from ``np.random.SeedSequence([seed, id])``, and
the compiled loop touches no other sequence's state, so any partition of ids over shards,
workers or machines, and any chunking, yields byte-identical sequences.

Step records (see ``omnirl_jax.data.schema``; dtypes in ``STEP_DTYPES``):

* an action step records the observation, the behaviour action, its reward, the label (the
  label oracle's action in the true state), the prompt (id of the label policy) and the tag;
* when an action reaches a terminal state, the *next* record is the terminal observation with
  the null action ``n_actions``, reward 0, label null, and the tag of the step that led there;
  the new episode's first observation follows;
* truncation at ``max_steps`` (a time limit, not a state of the task) starts the next episode
  directly, without a terminal record: the agent never sees a null action for a time-out;
* a bandit (``n_states == 1``) or contextual bandit (``Task.one_step``) ends every episode with
  its pull, and that terminal record would say nothing (the state reached is not a consequence of
  the pull, the null action, reward 0): it is left out, so every record of a bandit sequence is a
  pull and half the tokens are not spent on null steps;
* ``plan[t]`` is the context plan (``omnirl_jax.data.context_plan``: value iteration on the
  sequence's own records before step ``t``) where ``plan_label`` is on, the null action elsewhere;
* ``episode_end[t]`` is True on the last record of every episode (the terminal record, or the
  last action of a truncated episode): ``obs[t + 1]`` is then a reset, not a consequence of
  ``action[t]``, so a world-model loss should skip it there.

The whole inner loop (all sequences, policies, labels, tags and env steps) is one ``@njit``
function over the batch; it steps tasks with ``anymdp_gym.dynamics.step_env``, the kernel the
Gymnasium envs use.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import NamedTuple, Optional, Sequence

import numpy as np
from numba import njit

from anymdp_gym.dynamics import compile_tasks, reset_env, step_env
from anymdp_gym.random_stream import seed_streams
from anymdp_gym.planning import expected_rewards, optimal_q, row_windows
from anymdp_gym.sampling import CBANDIT_REWARDS, sample_contextual_bandit, sample_garnet_task, sample_task
from anymdp_gym.task import Task
from omnirl_jax.data import context_plan
from omnirl_jax.data import policies as pol
from omnirl_jax.data.schema import TAG_ID, terminal_record_follows

STEP_DTYPES = {
    "obs": np.dtype(np.uint16),
    "action": np.dtype(np.uint8),
    "label": np.dtype(np.uint8),
    "reward": np.dtype(np.float32),
    "prompt": np.dtype(np.uint8),
    "tag": np.dtype(np.uint8),
    "episode_end": np.dtype(np.bool_),
    "plan": np.dtype(np.uint8),
}
"""Fields returned by ``SequenceGenerator.run``, each ``[n_sequences, n_steps]``, and their dtypes."""

DEFAULT_POLICY_WEIGHTS = {
    "opt0": 0.05,
    "opt1": 0.05,
    "opt2": 0.05,
    "opt3": 0.10,
    "noisy_oracle": 0.15,
    "qlearning": 0.15,
    "mbrl": 0.15,
    "mbrl_oracle": 0.20,
    "random_drift": 0.10,
}
"""Default behaviour mixture: 0.4 oracles (clean or noisy), 0.5 learners, 0.1 drifting random."""

TASK_FAMILIES = ("anymdp", "garnet", "cbandit")
LABEL_POLICIES = pol.POLICY_NAMES[: len(pol.ORACLE_GAMMAS)]


@dataclasses.dataclass
class GeneratorConfig:
    """Every generation setting (the one source of truth): an ``omnirl-generate --config`` file, a
    manifest's ``generator`` and the trainer's ``data.generator`` section; ``validate`` before use."""

    n_states: int = 16
    """Observation ids of states (>= 8), or 1: multi-armed bandits (``anymdp_gym.sampling``: every
    pull is a one-step episode, so a sequence holds no terminal records and every step is a pull);
    the number of contexts (>= 2) of the ``cbandit`` family."""
    n_actions: int = 5
    min_states: Optional[int] = None
    """If set, each task has ``randint(min_states, n_states + 1)`` active states."""
    seq_len: int = 2048
    """Steps per sequence; ``run`` refuses to go past it."""
    task_family: str = "anymdp"
    """``anymdp``, ``garnet`` or ``cbandit`` (contextual bandits,
    ``anymdp_gym.sampling.sample_contextual_bandit``: every pull a one-step episode, as bandits)."""
    cbandit_rewards: str = "anymdp"
    """Reward scheme of the ``cbandit`` family (``sampling.CBANDIT_REWARDS``)."""
    policy_weights: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_POLICY_WEIGHTS))
    """Behaviour mixture: policy name (``policies.POLICY_NAMES``) -> non-negative weight."""
    label_policy: str = "opt3"
    """Oracle whose action is the label (``opt0``..``opt3``); its tag id is the prompt."""
    plan_label: bool = False
    """Record ``plan``, the context plan (``omnirl_jax.data.context_plan``) at the label oracle's
    discount; off, ``plan`` is the null action (the plan costs ``20 * S * A * S`` per step)."""
    tag_hide_sequence_prob: float = 0.15
    tag_hide_episode_prob: float = 0.15
    policy_redraw_prob: float = 0.2
    """Probability of redrawing the behaviour policy at each episode boundary."""
    q_alpha: float = 0.01
    q_alpha_exponential_prob: float = 0.5
    """Probability that a sequence's alpha is ``q_alpha * Exponential(1)`` instead of ``q_alpha``."""
    q_gamma_range: tuple[float, float] = (0.90, 0.99)
    mbrl_c: float = 0.005
    mbrl_gamma_range: tuple[float, float] = (0.90, 0.99)
    mbrl_sweeps: int = 2
    """Warm-started value-iteration sweeps per plan of the model-based agent (it plans at an
    episode start, at most once per ``n_active`` steps)."""
    noise_range: tuple[float, float] = (0.3, 1.0)
    """Initial epsilon of the noisy policies, uniform per sequence."""
    halflife_range: tuple[float, float] = (1_000.0, 100_000.0)
    """Half-life in steps of noise and oracle hand-off schedules, log-uniform per sequence."""
    logit_scale: float = 1.0
    """Std of the initial logits of ``random_drift``."""
    drift_range: tuple[float, float] = (0.0, 0.2)
    """Std of a ``random_drift`` logit step, uniform per sequence."""
    min_forward: int = 1
    min_backward: int = 1
    """AnyMDP band reaches (``anymdp_gym.sampling``; the paper's data used 2 and 4)."""
    garnet_branching: int = 2

    def validate(self) -> "GeneratorConfig":
        """Raise a one-line ``ValueError`` naming the first bad field; returns ``self``."""

        def bad(field: str, why: str):
            raise ValueError(f"GeneratorConfig.{field}: {why}")

        def is_int(x):
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        def probability(field: str):
            x = getattr(self, field)
            if not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
                bad(field, f"must be a probability in [0, 1], got {x!r}")

        def interval(field: str, lo: float, hi: float, closed_hi: bool = True):
            x = getattr(self, field)
            if not (isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, (int, float)) for v in x)):
                bad(field, f"must be a pair (lo, hi), got {x!r}")
            ok_hi = x[1] <= hi if closed_hi else x[1] < hi
            if not (lo <= x[0] <= x[1] and ok_hi):
                bad(field, f"must satisfy {lo} <= lo <= hi {'<=' if closed_hi else '<'} {hi}, got {x!r}")

        lowest = 2 if self.task_family == "cbandit" else 8
        if not is_int(self.n_states) or not (lowest <= self.n_states <= np.iinfo(STEP_DTYPES["obs"]).max or self.n_states == 1):
            bad("n_states", f"must be an integer in [{lowest}, 65535], or 1 for bandits, got {self.n_states!r}")
        if self.n_states == 1 and (self.task_family != "anymdp" or self.min_states is not None):
            bad("n_states", "1 (bandits) needs task_family 'anymdp' and min_states None")
        if not is_int(self.n_actions) or not 2 <= self.n_actions < np.iinfo(STEP_DTYPES["action"]).max:
            bad("n_actions", f"must be an integer in [2, 254] (id n_actions is the null action), got {self.n_actions!r}")
        if self.min_states is not None and not (is_int(self.min_states) and 8 <= self.min_states <= self.n_states):
            bad("min_states", f"must be None or an integer in [8, n_states={self.n_states}], got {self.min_states!r}")
        if not is_int(self.seq_len) or self.seq_len < 1:
            bad("seq_len", f"must be an integer >= 1, got {self.seq_len!r}")
        if self.task_family not in TASK_FAMILIES:
            bad("task_family", f"must be one of {TASK_FAMILIES}, got {self.task_family!r}")
        if self.task_family == "cbandit" and self.min_states is not None:
            bad("min_states", "must be None for the cbandit family (every context is in use)")
        if self.cbandit_rewards not in CBANDIT_REWARDS:
            bad("cbandit_rewards", f"must be one of {CBANDIT_REWARDS}, got {self.cbandit_rewards!r}")
        if not isinstance(self.policy_weights, dict) or not self.policy_weights:
            bad("policy_weights", f"must be a non-empty dict name -> weight, got {self.policy_weights!r}")
        for name, weight in self.policy_weights.items():
            if name not in pol.POLICY_ID:
                bad("policy_weights", f"unknown policy {name!r}; known: {', '.join(pol.POLICY_NAMES)}")
            if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
                bad("policy_weights", f"weight of {name!r} must be a finite number >= 0, got {weight!r}")
        if sum(self.policy_weights.values()) <= 0:
            bad("policy_weights", "weights sum to 0")
        if self.label_policy not in LABEL_POLICIES:
            bad("label_policy", f"must be one of {LABEL_POLICIES}, got {self.label_policy!r}")
        if not isinstance(self.plan_label, bool):
            bad("plan_label", f"must be true or false, got {self.plan_label!r}")
        for field in ("tag_hide_sequence_prob", "tag_hide_episode_prob", "policy_redraw_prob", "q_alpha_exponential_prob"):
            probability(field)
        if not isinstance(self.q_alpha, (int, float)) or not 0.0 < self.q_alpha <= 1.0:
            bad("q_alpha", f"must be in (0, 1], got {self.q_alpha!r}")
        interval("q_gamma_range", 0.0, 1.0, closed_hi=False)
        interval("mbrl_gamma_range", 0.0, 1.0, closed_hi=False)
        if not isinstance(self.mbrl_c, (int, float)) or self.mbrl_c < 0:
            bad("mbrl_c", f"must be >= 0, got {self.mbrl_c!r}")
        if not is_int(self.mbrl_sweeps) or self.mbrl_sweeps < 1:
            bad("mbrl_sweeps", f"must be an integer >= 1, got {self.mbrl_sweeps!r}")
        interval("noise_range", 0.0, 1.0)
        interval("halflife_range", 1e-9, np.inf)
        if not isinstance(self.logit_scale, (int, float)) or self.logit_scale < 0:
            bad("logit_scale", f"must be >= 0, got {self.logit_scale!r}")
        interval("drift_range", 0.0, np.inf)
        for field in ("min_forward", "min_backward"):
            if not is_int(getattr(self, field)) or getattr(self, field) < 1:
                bad(field, f"must be an integer >= 1, got {getattr(self, field)!r}")
        if self.task_family == "garnet" and not (is_int(self.garnet_branching) and 1 <= self.garnet_branching <= (self.min_states or self.n_states)):
            bad("garnet_branching", f"must be an integer in [1, active states], got {self.garnet_branching!r}")
        return self

    def identity(self) -> dict:
        """JSON form of the fields that fix the generated sequences, which a resumed run's loader
        must match: all of them, but ``plan_label`` while off (added 2026-12-08: off, the records
        are those generated before it, so runs started before it still resume)."""
        fields = json.loads(json.dumps(dataclasses.asdict(self)))
        if not self.plan_label:
            del fields["plan_label"]
        return fields

    @property
    def one_step(self) -> bool:
        """Every episode of these tasks is one pull (bandits, contextual bandits), so their
        sequences hold no terminal records (module doc)."""
        return self.n_states == 1 or self.task_family == "cbandit"

    def policy_params(self) -> pol.PolicyParams:
        """The compiled kernels' view of this config: ``PolicyParams``'s fields by name (an
        ``x_range`` as ``x_lo``, ``x_hi``), cast to their types; the mixture as a cumulative sum."""
        weights = np.array([float(self.policy_weights.get(name, 0.0)) for name in pol.POLICY_NAMES])
        cdf = np.cumsum(weights / weights.sum())
        cdf[-1] = 1.0
        uses = {name for name, w in self.policy_weights.items() if w > 0}
        named = {"weights_cdf": cdf, "label_oracle": pol.POLICY_ID[self.label_policy], "redraw_prob": self.policy_redraw_prob,
                 "hide_sequence_prob": self.tag_hide_sequence_prob, "hide_episode_prob": self.tag_hide_episode_prob,
                 "learn_q": "qlearning" in uses, "learn_model": bool(uses & {"mbrl", "mbrl_oracle"})}
        for name in pol.PolicyParams._fields:
            stem, _, end = name.rpartition("_")
            if name not in named:
                named[name] = getattr(self, f"{stem}_range")[end == "hi"] if end in ("lo", "hi") else getattr(self, name)
        kinds = typing.get_type_hints(pol.PolicyParams)
        return pol.PolicyParams(**{name: kinds[name](v) if kinds[name] in (int, float, bool) else v for name, v in named.items()})

    def sample_task(self, rng: np.random.Generator) -> Task:
        """One task of the configured family, drawn from ``rng``."""
        if self.task_family == "cbandit":
            return sample_contextual_bandit(self.n_states, self.n_actions, seed=rng, rewards=self.cbandit_rewards)
        if self.task_family == "garnet":
            return sample_garnet_task(self.n_states, self.n_actions, seed=rng, min_states=self.min_states,
                                      branching=self.garnet_branching)
        return sample_task(self.n_states, self.n_actions, seed=rng, min_states=self.min_states,
                           min_forward=self.min_forward, min_backward=self.min_backward)


def oracle_actions(task: Task, gammas: Sequence[float] = pol.ORACLE_GAMMAS) -> np.ndarray:
    """Greedy action of Q* at each discount, ``[len(gammas), n_active]`` (internal states).

    Solved in ascending discount, each policy iteration warm-started from the previous policy.
    """
    lo, hi = row_windows(task.transition)
    exp_reward = expected_rewards(task.transition, task.reward, lo, hi)
    actions = np.full(task.n_active, -1, dtype=np.int64)
    out = np.empty((len(gammas), task.n_active), dtype=np.int64)
    for k in np.argsort(gammas, kind="stable"):
        q = optimal_q(task.transition, exp_reward, float(gammas[k]), lo, hi, actions)
        actions = q.argmax(axis=1)
        out[k] = actions
    return out


def _with_two_start_entries(task: Task) -> Task:
    """``task`` with a zero-probability copy of its start state when it has only one.

    Why: ``dynamics.reset_env`` spends a random number on the start draw only when some task of
    the compiled batch has several start states, so a one-start task would replay differently
    alone and in a batch. Two entries per task make every batch spend one number per reset.
    """
    if task.start_states.size > 1:
        return task
    return task.replace(start_states=np.repeat(task.start_states, 2), start_probs=np.array([1.0, 0.0]))


class EnvState(NamedTuple):
    """Per-sequence env state carried across chunks (axis 0 = sequence)."""

    rng: np.ndarray  # uint64 [N] env streams
    state: np.ndarray  # int64 [N] internal state
    obs: np.ndarray  # int64 [N] observation of ``state``: the next record's observation
    episode_step: np.ndarray  # int64 [N] actions taken in the current episode
    pending_terminal: np.ndarray  # bool [N] the next record is a terminal record
    last_tag: np.ndarray  # int64 [N] tag of the last action step


StepRecords = NamedTuple("StepRecords", [(name, np.ndarray) for name in STEP_DTYPES if name != "plan"])
"""A chunk's records as ``_run`` writes them: the ``STEP_DTYPES`` fields but ``plan`` (a function of
the others, ``context_plan``), ``[n_sequences, n_steps]``."""


@njit(cache=True)
def _start(tables, env, st, prm):
    for j in range(env.rng.shape[0]):
        s, o = reset_env(tables, j, env.rng)
        env.state[j], env.obs[j] = s, o
        pol.init_sequence(st, prm, j)


@njit(cache=True)
def _run(tables, env, st, prm, out):
    """Advance every sequence by ``out.obs.shape[1]`` records (the module doc's step schema).

    A sequence's changing scalars live in locals for the chunk and are stored back at its end.
    """
    n_steps = out.obs.shape[1]
    null = tables.rows.shape[2]  # the null action: id n_actions
    label_k = prm.label_oracle
    agent_rng, env_rng = st.agent_rng, env.rng
    obs_out, action_out, label_out, reward_out, prompt_out, tag_out, end_out = out
    for j in range(obs_out.shape[0]):
        ag = pol.Agent(st.oracle[j], st.q[j], st.greedy[j], st.weights[j], st.noisy_oracle[j], st.mix_oracle[j],
                       st.drift[j])
        q, q_alpha, q_gamma, window_lo = st.q[j], st.q_alpha[j], st.q_gamma[j], st.window_lo[j]
        counts, n_sa, r_sum, seen_lo, seen_hi = st.counts[j], st.n_sa[j], st.r_sum[j], st.seen_lo[j], st.seen_hi[j]
        terminal_seen, r_max = st.terminal_seen[j], st.r_max[j]
        max_steps = tables.max_steps[j]
        s, o, episode_step = env.state[j], env.obs[j], env.episode_step[j]
        pending, last_tag = env.pending_terminal[j], env.last_tag[j]
        policy, since_plan = st.policy[j], st.since_plan[j]
        sched, factors = pol.schedule(st, j), pol.decay(st, j)
        hide_sequence, hide_episode = st.hide_sequence[j], st.hide_episode[j]
        for t in range(n_steps):
            prompt_out[j, t] = label_k
            obs_out[j, t] = o
            if pending:
                action_out[j, t] = null
                label_out[j, t] = null
                reward_out[j, t] = 0.0
                tag_out[j, t] = last_tag
                end_out[j, t] = True
                pending = False
                s, o = reset_env(tables, j, env_rng)
                episode_step = 0
                policy, hide_episode, since_plan = pol.begin_episode(st, prm, j, False, policy, since_plan)
                continue
            a, tag = pol.act(ag, policy, s, sched, agent_rng, j)
            if hide_sequence or hide_episode:
                tag = pol.TAG_UNK
            s2, o2, r, _, terminated = step_env(tables, j, s, a, env_rng)
            pol.learn(s, a, r, s2, terminated, max_steps == 1, prm.learn_q, q, q_alpha, q_gamma, prm.learn_model,
                      counts, n_sa, r_sum, seen_lo, seen_hi, terminal_seen, r_max, window_lo)
            sched = pol.advance(sched, factors)
            since_plan += 1
            action_out[j, t] = a
            label_out[j, t] = ag.oracle[label_k, s]
            reward_out[j, t] = r
            tag_out[j, t] = tag
            last_tag = tag
            s, o = s2, o2
            episode_step += 1
            if terminal_record_follows(terminated, max_steps):
                pending = True
                end_out[j, t] = False
            elif terminated or episode_step >= max_steps:
                end_out[j, t] = True
                s, o = reset_env(tables, j, env_rng)
                episode_step = 0
                policy, hide_episode, since_plan = pol.begin_episode(st, prm, j, False, policy, since_plan)
            else:
                end_out[j, t] = False
        env.state[j], env.obs[j], env.episode_step[j] = s, o, episode_step
        env.pending_terminal[j], env.last_tag[j] = pending, last_tag
        st.policy[j], st.since_plan[j], st.hide_episode[j] = policy, since_plan, hide_episode
        for col in range(4):
            st.schedule[j, col] = sched[col]


class SequenceGenerator:
    """Stateful chunked generator of ``len(sequence_ids)`` sequences (module doc).

    Args:
        config: generation settings (validated here).
        seed: a non-negative integer shared by every shard of a data set.
        sequence_ids: non-negative integer ids; sequence ``j`` depends on ``(seed, ids[j])`` only.
    """

    def __init__(self, config: GeneratorConfig, seed: int, sequence_ids: Sequence[int]):
        self.config = config.validate()
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        ids = np.asarray(sequence_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0:
            raise ValueError("sequence_ids must be a non-empty 1-D list of non-negative integers")
        self.seed = int(seed)
        self.sequence_ids = ids.astype(np.int64)
        self.steps_done = 0
        n_seq = ids.size
        self.tasks: list[Task] = []
        env_rng = np.empty(n_seq, np.uint64)
        agent_rng = np.empty(n_seq, np.uint64)
        for j, sid in enumerate(self.sequence_ids):
            task_seq, stream_seq = np.random.SeedSequence([self.seed, int(sid)]).spawn(2)
            self.tasks.append(config.sample_task(np.random.default_rng(task_seq)))
            env_rng[j], agent_rng[j] = seed_streams(np.random.default_rng(stream_seq), 2)
        self.tables = compile_tasks([_with_two_start_entries(task) for task in self.tasks])
        n = max(task.n_active for task in self.tasks)
        width = max(pol.window_width(task) for task in self.tasks)
        self._state = pol.allocate(n_seq, n, config.n_actions, width)
        self._state.agent_rng[:] = agent_rng
        for j, task in enumerate(self.tasks):
            pol.fill_task(self._state, j, task, oracle_actions(task))
        self._env = EnvState(
            rng=env_rng,
            state=np.zeros(n_seq, np.int64),
            obs=np.zeros(n_seq, np.int64),
            episode_step=np.zeros(n_seq, np.int64),
            pending_terminal=np.zeros(n_seq, np.bool_),
            last_tag=np.full(n_seq, TAG_ID["unk"], np.int64),
        )
        self._params = config.policy_params()
        self._plan = context_plan.allocate(n_seq, config.n_states, config.n_actions) if config.plan_label else None
        _start(self.tables, self._env, self._state, self._params)

    def run(self, n_steps: int) -> dict[str, np.ndarray]:
        """The next ``n_steps`` records of every sequence: ``STEP_DTYPES`` fields, ``[n_seq, n_steps]``."""
        if not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        if self.steps_done + n_steps > self.config.seq_len:
            raise ValueError(f"run({n_steps}) after {self.steps_done} steps passes seq_len={self.config.seq_len}")
        shape = (self.sequence_ids.size, int(n_steps))
        out = StepRecords(**{name: np.empty(shape, STEP_DTYPES[name]) for name in StepRecords._fields})
        _run(self.tables, self._env, self._state, self._params, out)
        plan = np.full(shape, self.config.n_actions, STEP_DTYPES["plan"])
        if self._plan is not None:
            gamma = pol.ORACLE_GAMMAS[pol.POLICY_ID[self.config.label_policy]]
            context_plan.label_chunk(self._plan, out.obs, out.action, out.reward, out.episode_end, gamma, plan)
        self.steps_done += int(n_steps)
        return {**out._asdict(), "plan": plan}

    @property
    def last_obs(self) -> np.ndarray:
        """``[n_seq]`` observation after the last returned record (its world-model target)."""
        return self._env.obs.astype(STEP_DTYPES["obs"])
