"""The trainer's configuration: one typed dataclass tree, loaded from YAML.

Field defaults describe a tiny CPU run; configs/*.yaml set the real sizes. ``load_config`` checks
types (via typed_config) and the cross-field rules below, so a bad config fails at start.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Sequence

from omnirl_jax.data.generate import GeneratorConfig
from omnirl_jax.typed_config import ConfigError, apply_overrides, from_dict, read_with_base, to_dict

@dataclasses.dataclass
class ModelConfig:
    mixer: Literal["gla", "delta"] = "gla"
    """Sequence mixer (``omnirl_jax.model.gla``): gated linear attention, or the gated delta rule,
    whose slot under a key holds a running average of what was written there (the per-arm mean an
    in-context learner needs) where GLA only sums. Bandit rung's label probe: policy loss 0.975
    with the delta rule, 1.600 with GLA (ln 5 = 1.609; docs/experiments.md)."""
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    head_dim: int = 0
    """Width of each head's queries, keys and values; 0 means ``d_model // n_heads``. Why apart from
    ``d_model``: a GLA head's memory is a ``head_dim x head_dim`` matrix, and recalling what followed
    each of the ``S * A`` state-action pairs of a task needs about that many near-orthogonal keys."""
    tied_qk: bool = False
    """Queries through the key projection: a token then matches earlier tokens that share its
    embedding (its observation, its pair) from the first step on, where separate projections
    must first learn to align. cbandit-8 rung: the policy loss leaves ln 5 at step ~250 instead of
    ~450 (docs/experiments.md)."""
    pair_embed: bool = False
    """Add to the action token its step's observation embedding and an embedding of the
    (observation, action) pair. Why: recalling what was done in a state, and what an action did
    there, is keyed on the observation and on the pair; with the observation's own embedding at
    both tokens a query from a later observation token matches it without first aligning two
    tables, and a sum of separate embeddings cannot represent the pair's conjunction."""
    reward_pair: bool = False
    """Add to the reward token its step's observation embedding and an embedding of the
    (observation, action) pair scaled by the reward. Why: the simplest use of rewards, which action
    paid best in this state, is then a sum over earlier reward tokens keyed on the observation, one
    attention read; without it the model must first multiply reward and action in an MLP. Measured
    with ``benchmarks/policy_probe.py --targets state_best_reward`` (demo model at 5 tokens per
    step, segments of 256, no behaviour term, 600 steps): accuracy 0.376 with it, 0.346 without,
    against 0.354 for the shortcut rules: a small gain only."""
    reward_zscore: bool = False
    """Also give the reward token the reward's z-score against the sequence's earlier rewards
    (``omnirl.reward_zscores``), and have the reward head predict it instead of the raw reward.
    Why: which arm pays best is judged within a task, while AnyMDP rewards differ far more across
    tasks (bandit arm means 0.03 to 1.9, best minus second 0.038 at the median), a division a small
    model does not learn from a linear embedding. Bandit rung's label probe: policy loss 0.533 with
    it, 0.720 without (docs/experiments.md)."""
    fused_step: bool = False
    """Three tokens per step instead of the spec's five: prompt, observation and tag share the first
    token (their embeddings summed), then action, then reward. Why: the prompt is constant over a
    sequence and the tag is known before the action, so neither needs a position of its own; the
    policy still reads a token that has seen neither the action nor the reward (it now sees the
    step's tag, which says who acts, not what). Measured on the demo config: 1.58 training steps/s
    against 1.03."""
    token_conv: int = 0
    """Taps of a causal depthwise convolution over the token embeddings (0 or 1: none). Why: with
    ``tokens_per_step + 3`` taps every token also sees the fields of its own and the previous step
    (the next observation sits beside the pair that led to it), a shift GLA must otherwise learn."""
    chunk_size: int = 64
    """GLA chunk length in tokens: parallel inside a chunk, recurrent across chunks (the same
    function at any size, up to rounding). Speed on 2 CPU cores, the bandit rung's model (16 x 768
    tokens, 3 layers): GLA about the same at 32 and 64; the delta rule, whose chunk solves a C x C
    system, 1.05 training steps/s at 32 against 0.83 at 64 and 0.90 at 16."""
    remat: bool = True
    """Recompute each block's activations in the backward pass (jax.checkpoint)."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """Matmul dtype; parameters and the recurrent state always stay float32."""

    @property
    def tokens_per_step(self) -> int:
        """Tokens per environment step: prompt, observation, tag, action, reward (3 when fused)."""
        return 3 if self.fused_step else 5


@dataclasses.dataclass
class DataConfig:
    source: Literal["generate", "shards"] = "generate"
    path: Optional[str] = None
    """Shard directory (source 'shards')."""
    workers: int = 1
    """Background generator processes (source 'generate'); 0 generates in the trainer process."""
    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    """The sequences: their sizes (``n_states``, the model's observation vocabulary; ``n_actions``,
    whose id ``n_actions`` is the null action; ``seq_len``), checked against the manifest with
    source 'shards', and how they are generated with source 'generate'."""


@dataclasses.dataclass
class LossConfig:
    policy: float = 0.2
    next_state: float = 0.4
    reward: float = 0.4
    behaviour: float = 0.0
    """Weight of an auxiliary behaviour-cloning term: a separate head at the policy's token
    predicts the behaviour action (0: no such head). Why: the executed action is a strong, nearly
    deterministic target for recall keyed on the current state, the circuit an in-context policy
    reads, while the label is a weak target for it; the policy head still learns from labels only."""
    plan_steps: int = 0
    """Training steps at the start whose policy target is the context plan (the batches' ``plan``,
    ``omnirl_jax.data.context_plan``; needs ``data.generator.plan_label``) instead of the label: a
    curriculum. Why: at 8 states the label alone stays at ln 5, planning on the context is learned
    first and carries into the label (label loss ~1.48 against 1.611 at step 1250, with the
    world-model terms off and 256-step sequences: ``omnirl_jax.data.context_plan``)."""
    warmup_steps: int = 512
    """Context warm-up: per-step weight ramps linearly over the first steps of a sequence."""
    warmup_start: float = 1e-3


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-3
    warmup_steps: int = 50
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    end_lr_factor: float = 0.1
    """Final learning rate as a fraction of ``lr`` (cosine and linear decay)."""
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    clip_norm: float = 1.0
    accumulate: int = 1
    """Segment batches whose gradients are averaged into one optimiser step."""


@dataclasses.dataclass
class MeshConfig:
    data: int = -1
    """Data-parallel axis size; -1 takes all devices not used by ``model``."""
    model: int = 1
    distributed: bool = False
    """Run as one of several processes (one per host) through ``jax.distributed``; the mesh spans
    them all (``omnirl_jax.sharding``)."""
    coordinator_address: Optional[str] = None
    """``HOST:PORT`` of process 0, which every process reaches (``omnirl-train --coordinator``);
    unset: ``JAX_COORDINATOR_ADDRESS`` or the cluster's (TPU pod, SLURM, Open MPI)."""
    num_processes: Optional[int] = None
    """Processes in the job (``--num-processes``); unset: the cluster's."""
    process_id: Optional[int] = None
    """This process's index, 0 to num_processes - 1 (``--process-id``); unset: the cluster's."""
    heartbeat_timeout: int = 60
    """Seconds without a heartbeat after which a process counts as dead and every other one
    aborts, so a host that dies takes the job down instead of leaving it hung in a collective.
    Why 60 rather than jax.distributed's 100: heartbeats come from a background thread that a long
    compile does not stop (5 s outlived 30-55 s compiles in ``tests/test_multihost.py``), and a
    dead host should not keep a pod idle for long."""


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 100
    """Save every this many optimiser steps (and at the end)."""
    keep: int = 3
    async_save: bool = True
    best_metric: Optional[str] = None
    """Keep the best checkpoints by this logged metric (e.g. 'loss') instead of the newest."""
    best_mode: Literal["min", "max"] = "min"
    restore_step: Optional[int] = None
    """Resume from this step instead of the latest one."""


@dataclasses.dataclass
class TrainConfig:
    steps: int = 200
    """Total optimiser steps."""
    batch_size: int = 8
    """Global batch (rows), split over the mesh's data axis."""
    segment_len: int = 128
    """Steps per segment: gradients flow within a segment, the recurrent state across them."""
    seed: int = 0
    log_every: int = 10


@dataclasses.dataclass
class EvalConfig:
    """Online in-context evaluation during training (``omnirl_jax.eval.in_training``): the model
    plays held-out tasks of a suite from an empty context, as ``omnirl-eval --modes online``."""

    every: int = 0
    """Evaluate every this many optimiser steps and at the end; 0: never."""
    suite: str = "bandit-5"
    """Suite of held-out tasks (``omnirl_jax.eval.suites.SUITES``)."""
    tasks: int = 64
    """Tasks played (the suite's first ones; at most the suite's size)."""
    seed: int = 0
    """Seed of the environments' and the policy's randomness in every evaluation."""
    temperature: float = 1.0
    """Temperature the model's policy is sampled at online, here, in ``benchmarks/icrl_ladder.py``
    and by default in ``omnirl-eval`` (0: greedy), after the first ``gather_steps``. 1 samples
    the distribution the model was trained to output (posterior sampling of the best action).
    Why another value: a policy that is flatter than its evidence supports gains from sharper
    sampling; choose it on validation tasks, not the reported ones (cbandit-8:
    docs/experiments.md)."""
    gather_steps: int = 0
    """The first this many interaction steps of a context are sampled at temperature 1, the rest at
    ``temperature``. Why: a sharp temperature from the first step stops gathering early (cbandit-8
    at 0.5 has tried 3.5 of a context's 5 arms after 1024 pulls); sampling the trained
    distribution while the context is short, then sharply, gains on validation tasks at both
    seeds (docs/experiments.md)."""
    untried_first: bool = False
    """During the gather steps, draw only among the actions not yet taken in the current
    observation while it has any (``rollout.Sampling``), as epsilon-greedy, UCB1 and Thompson
    sampling begin. Why: sampled from its trained distribution a bandit model tries 3.1-3.4 of 5
    arms in its first 5 pulls, and its first window falls short of epsilon-greedy's for it; every
    arm once first, then 0.5, scores 0.911 against 0.883 on 256 bandit validation tasks, and
    cbandit-8 0.816 / 0.812 against 0.781 / 0.773 (two data seeds; docs/experiments.md)."""


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


MOVED_DATA_KEYS = ("n_states", "n_actions", "seq_len")
"""Keys of ``data`` that moved into ``data.generator`` (issue 29)."""
RETIRED_MODEL_KEYS = {"mlp_ratio": 4, "gate_temperature": 16.0, "window": 320, "dropout": 0.0}
"""Model options that no config set, removed (issue 29), at the one value they ever had."""


def upgrade(raw: dict) -> dict:
    """``raw`` in the current layout. Why: configs written before issue 29 (a run's ``config.yaml``,
    an exported model's) keep loading; a removed model option set to anything but its one value
    fails with one line."""
    data, model = raw.get("data"), raw.get("model")
    if isinstance(data, dict) and isinstance(data.get("generator") or {}, dict):
        generator = data["generator"] = data.get("generator") or {}
        for key in MOVED_DATA_KEYS:
            if key in data:
                if key in generator:
                    raise ConfigError(f"config key 'data.{key}': set data.generator.{key} only (it moved there)")
                generator[key] = data.pop(key)
    for key, value in RETIRED_MODEL_KEYS.items():
        if isinstance(model, dict) and key in model and model.pop(key) != value:
            raise ConfigError(f"config key 'model.{key}': removed (every config used {value})")
    return raw


def resolve(raw: dict) -> dict:
    """A config mapping (a run's ``config.yaml``) as this version reads it, as a plain dict:
    upgraded, every default filled in. Why: what changed since a run's last start is then what a
    user changed, not how configs are written (``workdir``)."""
    return to_dict(from_dict(Config, upgrade(raw)))


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Loads (with the YAML's ``base``), upgrades (``upgrade``), overrides and validates a config;
    raises ConfigError with a one-line message."""
    moved = [f"data.{key}" for key in MOVED_DATA_KEYS]  # --set data.n_states=8, as before issue 29
    overrides = [item.replace("data.", "data.generator.", 1) if item.partition("=")[0] in moved else item
                 for item in overrides]
    cfg = from_dict(Config, apply_overrides(upgrade(read_with_base(path)), overrides))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field rules that types alone cannot express."""
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim
    positive = {
        "model.d_model": m.d_model, "model.n_layers": m.n_layers, "model.n_heads": m.n_heads,
        "model.chunk_size": m.chunk_size, "data.generator.n_states": d.generator.n_states,
        "data.generator.n_actions": d.generator.n_actions, "data.generator.seq_len": d.generator.seq_len,
        "train.steps": t.steps, "train.batch_size": t.batch_size,
        "train.segment_len": t.segment_len, "train.log_every": t.log_every,
        "optim.accumulate": o.accumulate, "checkpoint.every": cfg.checkpoint.every,
        "checkpoint.keep": cfg.checkpoint.keep, "mesh.model": cfg.mesh.model,
        "mesh.heartbeat_timeout": cfg.mesh.heartbeat_timeout,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key {key!r}: must be positive, got {value}")
    if d.workers < 0:
        raise ConfigError(f"config key 'data.workers': must be >= 0 (0 generates in the trainer process), got {d.workers}")
    if not cfg.eval.temperature >= 0:
        raise ConfigError(f"config key 'eval.temperature': must be >= 0 (0: greedy), got {cfg.eval.temperature}")
    if cfg.eval.gather_steps < 0:
        raise ConfigError(f"config key 'eval.gather_steps': must be >= 0 (0: none), got {cfg.eval.gather_steps}")
    if cfg.eval.every < 0 or cfg.eval.tasks <= 0:
        raise ConfigError(f"config key 'eval.every'/'eval.tasks': every must be >= 0 (0: no evaluation) and tasks positive, "
                          f"got {cfg.eval.every} and {cfg.eval.tasks}")
    if cfg.mesh.data == 0 or cfg.mesh.data < -1:
        raise ConfigError(f"config key 'mesh.data': must be positive or -1, got {cfg.mesh.data}")
    if m.token_conv < 0:
        raise ConfigError(f"config key 'model.token_conv': must be >= 0 (0 or 1: none), got {m.token_conv}")
    if m.head_dim < 0:
        raise ConfigError(f"config key 'model.head_dim': must be >= 0 (0: d_model // n_heads), got {m.head_dim}")
    if m.head_dim == 0 and m.d_model % m.n_heads:
        raise ConfigError(f"config key 'model.d_model': {m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if d.source == "shards" and not d.path:
        raise ConfigError("config key 'data.path': required when data.source is 'shards'")
    if o.lr <= 0 or o.clip_norm <= 0:
        raise ConfigError("config key 'optim.lr'/'optim.clip_norm': must be positive")
    if cfg.loss.plan_steps < 0 or (cfg.loss.plan_steps > 0 and not d.generator.plan_label):
        raise ConfigError(f"config key 'loss.plan_steps': must be >= 0, and > 0 only with data.generator.plan_label "
                          f"true (the plan is the target), got {cfg.loss.plan_steps} with plan_label "
                          f"{d.generator.plan_label}")
    if cfg.loss.warmup_steps < 0 or not 0.0 < cfg.loss.warmup_start <= 1.0:
        raise ConfigError("config key 'loss.warmup_start': must be in (0, 1] with warmup_steps >= 0")
