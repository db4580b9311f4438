"""Typed config loading: the shipped configs load; bad keys and values fail with one line."""

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from omnirl_jax.config import Config, load_config, resolve
from omnirl_jax.typed_config import ConfigError, apply_overrides, from_dict, to_dict

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("name", ["cpu", "gpu", "tpu", "quickstart", "ladder/bandit", "ladder/cbandit-8", "ladder/anymdp-8", "ladder/anymdp-16"])
def test_shipped_configs_load(name):
    cfg = load_config(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, Config)


def test_tpu_config_is_paper_scale():
    cfg = load_config(str(CONFIGS / "tpu.yaml"))
    assert cfg.data.generator.seq_len == 524288 and cfg.train.segment_len == 4096
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads) == (18, 512, 8)
    assert cfg.mesh.data * cfg.mesh.model == 32 and cfg.train.batch_size % cfg.mesh.data == 0
    assert (cfg.loss.policy, cfg.loss.next_state, cfg.loss.reward) == (0.2, 0.4, 0.4)


@dataclasses.dataclass
class Inner:
    rate: float = 0.5
    kind: Literal["a", "b"] = "a"
    tags: list[str] = dataclasses.field(default_factory=list)
    limit: Optional[int] = None


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner = dataclasses.field(default_factory=Inner)
    scales: dict[str, float] = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    flag: bool = False


def test_generic_types():
    cfg = from_dict(Outer, {"name": "x", "inner": {"rate": 2, "kind": "b", "tags": ["p"], "limit": 3},
                            "scales": {"u": 1}, "extra": {"any": [1, {"thing": None}]}, "flag": True})
    assert cfg.inner == Inner(rate=2.0, kind="b", tags=["p"], limit=3)
    assert isinstance(cfg.inner.rate, float) and cfg.scales == {"u": 1.0}
    assert cfg.extra == {"any": [1, {"thing": None}]}
    assert from_dict(Outer, {"name": "y", "inner": {"limit": None}}).inner.limit is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "inner": {"rat": 1}}, "unknown config key 'inner.rat'"),
        ({"name": "x", "inner": {"rate": "fast"}}, "'inner.rate': expected a number, got str 'fast'"),
        ({"name": "x", "inner": {"kind": "c"}}, "'inner.kind': 'c' is not one of ['a', 'b']"),
        ({"name": "x", "inner": {"tags": ["p", 3]}}, "'inner.tags[1]': expected a string"),
        ({"name": "x", "inner": {"limit": 1.5}}, "'inner.limit': expected an integer"),
        ({"name": "x", "flag": 1}, "'flag': expected true/false"),
        ({"name": "x", "scales": {"u": "big"}}, "'scales.u': expected a number"),
        ({"name": "x", "inner": 3}, "'inner': expected a section"),
        ({}, "missing required config key 'name'"),
    ],
)
def test_errors_name_the_dotted_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layers: 2\ntrain:\n  steps: 10\n")
    cfg = load_config(str(path), ["model.n_layers=3", "optim.lr=2e-4", "data.generator.halflife_range=[16, 32]",
                                  "checkpoint.best_metric=loss", "model.mixer=delta", "data.n_states=12"])
    assert cfg.model.n_layers == 3 and cfg.optim.lr == 2e-4 and cfg.train.steps == 10
    assert cfg.data.generator.halflife_range == (16.0, 32.0) and cfg.checkpoint.best_metric == "loss"
    assert cfg.data.generator.n_states == 12  # the key of configs before issue 29 (data.generator.n_states now)
    raw = {"a": {"b": 1}}
    assert apply_overrides(raw, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}} and raw == {"a": {"b": 1}}
    for bad, message in [
        ("model.n_layer=3", "unknown config key 'model.n_layer'"),
        ("train.steps=many", "'train.steps': expected an integer"),
        ("train.steps", "must look like dotted.key=value"),
        ("train.steps.x=1", "train.steps is not a section"),
        ("model.d_model=30", "'model.d_model': 30 is not divisible by model.n_heads=4"),
        ("data.source=shards", "'data.path': required"),
        ("model.head_dim=-1", "'model.head_dim': must be >= 0"),
        ("model.token_conv=-2", "'model.token_conv': must be >= 0"),
        ("data.generator.telepathy=1", "unknown config key 'data.generator.telepathy'"),
        ("data.generator.halflife_range=[1]", "'data.generator.halflife_range': expected a list of 2"),
        ("data.generator.n_states=0", "'data.generator.n_states': must be positive"),
        ("eval.temperature=-0.5", "'eval.temperature': must be >= 0"),
        ("eval.gather_steps=-1", "'eval.gather_steps': must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=None) as err:
            load_config(str(path), [bad])
        assert message in str(err.value), (bad, str(err.value))
    # With an explicit head width, d_model need not divide by the head count.
    assert load_config(str(path), ["model.d_model=30", "model.head_dim=8"]).model.head_dim == 8


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(str(bad))
    assert "\n" not in str(err.value)


def test_a_config_states_only_what_differs_from_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {d_model: 48, n_layers: 3}\ntrain: {steps: 900, seed: 4}\n")
    (tmp_path / "variant.yaml").write_text("base: base.yaml\ntrain: {steps: 30}\n")
    cfg = load_config(str(tmp_path / "variant.yaml"), ["model.n_layers=1"])
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.train.steps, cfg.train.seed) == (48, 1, 30, 4)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(str(tmp_path / "loop.yaml"))
    (tmp_path / "missing.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="cannot read config file .*nowhere.yaml"):
        load_config(str(tmp_path / "missing.yaml"))


def test_the_quickstart_is_the_bandit_rung_with_evaluation():
    quick, rung = load_config(str(CONFIGS / "quickstart.yaml")), load_config(str(CONFIGS / "ladder" / "bandit.yaml"))
    assert quick.model == rung.model and quick.data == rung.data and quick.eval.every > 0 and quick.eval.suite == "bandit-5"


def test_configs_of_the_former_layout_load(tmp_path):
    """A run's config.yaml written before issue 29: the sizes at data, the removed model options at
    their one value. Both spellings of a size, or a removed option changed, fail with one line."""
    path = tmp_path / "config.yaml"
    former = "model:\n  mlp_ratio: 4\n  window: 320\n  dropout: 0.0\n  gate_temperature: 16.0\ndata:\n  n_states: 8\n  seq_len: 64\n"
    path.write_text(former + "  generator:\n    q_alpha: 0.1\n")
    cfg = load_config(str(path))
    assert (cfg.data.generator.n_states, cfg.data.generator.seq_len, cfg.data.generator.q_alpha) == (8, 64, 0.1)
    # A run's former config.yaml resolves as it loads, so a resume reports no change; today's too.
    assert resolve(yaml.safe_load(path.read_text())) == to_dict(cfg) == resolve(to_dict(cfg))
    for text, message in [(former + "  generator:\n    n_states: 8\n", "'data.n_states': set data.generator.n_states only"),
                          (former.replace("mlp_ratio: 4", "mlp_ratio: 2"), "'model.mlp_ratio': removed")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(str(path))
