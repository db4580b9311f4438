"""benchmarks/device_check.py: its FLOP count and peak table, and a whole ``--tiny`` run on CPU."""

import csv
import importlib.util
import json
import math
from pathlib import Path

from omnirl_jax.config import Config, ModelConfig

spec = importlib.util.spec_from_file_location("device_check", Path(__file__).parents[1] / "benchmarks" / "device_check.py")
device_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_check)


def test_peak_tflops_longest_key_wins():
    assert device_check.peak_tflops("NVIDIA H200") == 989
    assert device_check.peak_tflops("NVIDIA H100 PCIe") == 756
    assert device_check.peak_tflops("TPU v5 lite") == 197  # v5e, not v5p's "TPU v5"
    assert device_check.peak_tflops("TPU v5") == 459
    assert device_check.peak_tflops("cpu") is None


def test_flops_per_token_counts_by_hand():
    cfg = Config(model=ModelConfig(d_model=32, n_layers=2, n_heads=2, chunk_size=64))
    cfg.data.generator.n_states, cfg.data.generator.n_actions = 16, 5
    d, f, inner, h, k = 32, 128, 32, 2, 16
    block = 4 * d * inner + inner * d + d * h + 3 * d * f  # q, k, v, out gate; o_proj; decay; MLP
    heads = d * 5 + d * 16 + d + 1 * d  # policy, next state, reward head; reward embedding
    flops = device_check.flops_per_token(cfg)
    assert flops["matmul_params_per_token"] == 2 * block + heads / 5
    assert flops["gla"] == 3 * 2 * (2 * 64 * h * 2 * k + 4 * h * k * k)
    assert flops["total"] == 6 * flops["matmul_params_per_token"] + flops["gla"]


def test_tiny_run_writes_speed_and_learning(tmp_path):
    assert device_check.main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["stopped"] is None and report["skipped"] == []
    rows = report["speed"]["rows"]
    assert [r["segment_len"] for r in rows] == [64, 128]
    for row in rows:
        for key in ("tokens_per_s", "segments_per_s", "tflops", "compiled_total_bytes", "seconds"):
            assert row[key] > 0, key
    assert report["speed"]["flops_per_token"]["total"] > 0
    assert rows[1]["compiled_temp_bytes"] > rows[0]["compiled_temp_bytes"]  # memory grows with the segment
    learning = report["learning"]
    assert learning["rung"] == "bandit" and learning["steps"] > 0 and learning["steps_per_s"] > 0
    result = learning["result"]
    assert result["tasks"] == 4 and result["steps"] > 0 and result["train_steps"] == learning["steps"]
    for key in ("model", "baseline", "ci_low", "first", "last"):  # scores may be negative after a few steps
        assert math.isfinite(result[key]), key
    assert learning["result_line"].startswith("rung=bandit model=")
    assert learning["pngs"] and all(Path(p).is_file() for p in learning["pngs"])
    for name, n_rows in (("speed.csv", 2), ("learning.csv", 1)):
        with open(tmp_path / name) as f:
            assert len(list(csv.DictReader(f))) == n_rows
