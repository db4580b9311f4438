"""Exported models (``omnirl_jax.pretrained``) and the shipped one under ``pretrained/``."""

from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from omnirl_jax import pretrained, sharding
from omnirl_jax.checkpoint import Checkpointer
from omnirl_jax.config import CheckpointConfig, Config, DataConfig, GeneratorConfig, MeshConfig, ModelConfig, TrainConfig
from omnirl_jax.eval.evaluate import EvalError, load_model
from omnirl_jax.train import Setup
from omnirl_jax.typed_config import to_dict

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory):
    """A training workdir with one checkpoint of a tiny model, and its export."""
    path = tmp_path_factory.mktemp("run")
    cfg = Config(model=ModelConfig(d_model=16, n_layers=1, n_heads=2, remat=False), data=DataConfig(generator=GeneratorConfig(n_states=4, n_actions=3)),
                 mesh=MeshConfig(data=1, model=1), checkpoint=CheckpointConfig(async_save=False), train=TrainConfig(batch_size=1))
    setup = Setup.create(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
    checkpointer = Checkpointer(path / "checkpoints", cfg.checkpoint)
    checkpointer.save(7, setup.init_state(), {"index": 0})
    checkpointer.close()
    (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path, pretrained.export(path, path.parent / "export")


def test_export_holds_the_checkpoints_parameters_and_nothing_else(run_and_export):
    workdir, export = run_and_export
    from_ckpt, from_export = load_model(workdir), load_model(export)
    assert from_export.step == 7 and from_export.config == from_ckpt.config
    a, b = pretrained._leaves(from_ckpt.runner.params), pretrained._leaves(from_export.runner.params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ckpt_bytes = sum(f.stat().st_size for f in (workdir / "checkpoints").rglob("*") if f.is_file())
    assert (export / pretrained.PARAMS_FILE).stat().st_size < ckpt_bytes / 2  # no optimiser moments


def test_a_damaged_or_mismatched_export_fails_with_one_line(run_and_export, tmp_path):
    _, export = run_and_export
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.yaml", pretrained.INFO_FILE):
        (broken / name).write_bytes((export / name).read_bytes())
    data = (export / pretrained.PARAMS_FILE).read_bytes()
    (broken / pretrained.PARAMS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(EvalError, match="cannot read the exported model") as err:
        load_model(broken)
    assert "\n" not in str(err.value)
    (broken / pretrained.PARAMS_FILE).write_bytes(data)
    cfg = yaml.safe_load((export / "config.yaml").read_text())
    cfg["model"]["d_model"] = 32
    (broken / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(EvalError, match="parameter .* is float32"):
        load_model(broken)
    with pytest.raises(EvalError, match="step 7 only"):
        load_model(export, step=3)


def test_the_shipped_bandit_model_still_learns_in_context(tmp_path):
    """The released parameters load with today's model code and still play unseen bandits far
    above random (they scored 0.9 on the rung's 64 tasks: ``pretrained/bandit-5/MODEL.md``)."""
    from omnirl_jax.eval.evaluate import run

    results = {r.agent: r for r in run(str(ROOT / "pretrained" / "bandit-5"), ["bandit-5"], modes=["online"],
                                       agents=["model", "random"], out=tmp_path, n_tasks=16, seed=3, log=lambda *_: None)}
    model, random = (float(np.nanmean(results[a].scores)) for a in ("model", "random"))
    assert model > random + 0.5 and model > 0.6
    assert np.nanmean(results["model"].curves[:, -1]) > np.nanmean(results["model"].curves[:, 0])


def test_readme_bandit_snippet():
    """The README's snippet that plays a new bandit with the shipped model, as written."""
    import contextlib
    import io
    import re

    readme = (ROOT / "README.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "pretrained/bandit-5" in b)
    assert len(snippet.strip().splitlines()) < 15
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet.replace('"pretrained/bandit-5"', repr(str(ROOT / "pretrained" / "bandit-5"))), {})
    first, last = map(float, re.fullmatch(r"mean reward: first 32 pulls (\S+), last 32 (\S+)\n", out.getvalue()).groups())
    assert last > first  # it learns this bandit in context
