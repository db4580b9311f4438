"""Device check: what one accelerator does with this trainer, in one call of under 8 minutes.

Prepared for a lent GPU (one NVIDIA H200); it installs nothing. On the machine, first::

    pip install -e ".[gpu]"                      # jax[cuda12] and the trainer's dependencies
    python benchmarks/device_check.py            # --expect gpu, --budget-s 420
    python benchmarks/device_check.py --tiny     # every part on CPU with tiny sizes, < 2 min

Parts, in order; before each the clock is checked and what would not fit is skipped, and a
watchdog thread writes what was measured and exits (status 3) before ``--budget-s`` whatever
happens:

1. devices: what JAX sees; with ``--expect gpu`` (the default without ``--tiny``) a machine
   without a GPU fails with one line.
2. speed: ``--config``'s model (``configs/gpu.yaml``) trained for ``--steps`` timed steps, after
   one compiling step, at each of ``--segments`` (steps per segment: 2048 and 4096; tiny: 64 and
   128 with a tiny model) on random schema batches (``bench_train.time_training``: the config's
   data source is not read, so this measures the trainer, not the data), ``--batch-size`` rows
   per device (4: the config's 32 rows are a node of 8 GPUs; XLA's CPU plan of its train step
   holds 7.5 GiB per row at 2048 steps, so 32 rows would not fit one H200; running out of device
   memory skips the remaining lengths with a note). Reported per segment
   length: tokens/s, model FLOPs per token, achieved TFLOP/s, MFU against ``PEAK_BF16_TFLOPS``
   (not reported for an unknown device kind), peak device memory
   (``memory_stats()["peak_bytes_in_use"]``: a high-water mark since the process started, so the
   lengths run in ascending order; None where the backend has no such statistic, e.g. CPU) and
   XLA's memory plan of the compiled step. Memory should grow with the segment only.
3. learning: the hardest rung of the in-context RL ladder (``benchmarks/icrl_ladder.py``) whose
   configured training steps fit the wall-time budget (``--learn-s``, default what the budget
   leaves after ``--reserve-s``), else the easiest one with as many steps as fit. The budget
   becomes a step count from each candidate's own measured steps/s (a few random-batch steps of
   its config, hardest first), so the training run itself is reproducible (``--rung`` and
   ``--learn-steps`` repeat it). It is trained and evaluated online against the rung's classic
   baseline (Q-learning for MDPs), and the ladder's result line is printed.

Model FLOPs per token (``flops_per_token``; what the model computes, not remat's recomputation):

* ``6 x`` matmul parameters per token (2 FLOPs per multiply-add forward, twice that backward):
  every kernel of the blocks acts on every token; the kernels outside them (heads, reward
  embedding) act once per environment step, so count ``1 / tokens_per_step``. Embedding lookups,
  norms, gates and other elementwise work are not counted.
* GLA chunk terms per layer (``omnirl_jax/model/gla.py``; chunk ``C``, ``H`` heads, key and value
  width ``K = V = head_dim``), forward, per token: intra-chunk scores ``q k^T`` over the whole
  ``C x C`` block (computed densely, then masked) ``2 C H K``, intra-chunk outputs ``scores v``
  ``2 C H V``, the read of the carried state ``q S`` ``2 H K V`` and its update ``k^T v``
  ``2 H K V``; times 3 for forward and backward: ``3 n_layers (2 C H (K + V) + 4 H K V)``.
  The sliding-window mixer is not counted (its FLOPs and MFU are then not reported).

MFU = tokens/s x FLOPs per token / (peak x devices in the mesh). Outputs under ``--out``
(default runs/device_check): ``device_check.json`` (everything), ``speed.csv``, ``learning.csv``
and the learning curves ``learning_*.png`` (copied from the ladder's evaluation folders).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, also when imported by tests

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import icrl_ladder  # noqa: E402
from bench_train import time_training  # noqa: E402
from omnirl_jax import sharding  # noqa: E402
from omnirl_jax.config import Config, load_config  # noqa: E402
from omnirl_jax.model.layers import head_width  # noqa: E402
from omnirl_jax.train import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312, "L40S": 362, "L4": 121,
    "TPU v4": 275, "TPU v5 lite": 197, "TPU v5e": 197, "TPU v5p": 459, "TPU v5": 459, "TPU v6 lite": 918, "TPU v6e": 918,
}
"""Dense bf16 peak TFLOP/s per chip, keyed by substrings of ``device.device_kind`` (the longest
matching key wins: "TPU v5" is v5p's kind, "TPU v5 lite" v5e's; "H100" is the SXM part)."""
TINY_SPEED = ("model.d_model=32", "model.n_layers=2", "model.n_heads=2", "mesh.data=1")
TINY_RUNG = ("model.d_model=32", "model.n_layers=1", "model.head_dim=16", "train.batch_size=4")
MEASURE_SEGMENTS = 6
"""Random-batch steps that measure a rung's speed (the first, compiling, is not timed)."""
MARGIN_S = 10.0
"""The watchdog fires this long before ``--budget-s`` (writing results takes well under it)."""
EXIT_BUDGET = 3


def peak_tflops(device_kind: str) -> Optional[float]:
    """The device kind's dense bf16 peak per chip, None when unknown."""
    kind = device_kind.lower()
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in kind:
            return float(PEAK_BF16_TFLOPS[key])
    return None


def flops_per_token(cfg: Config) -> dict:
    """Model training FLOPs per token by term (module doc); ``total`` is None for a non-GLA mixer."""
    model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    in_blocks = outside = 0
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "kernel":
            if path[0] == "blocks":
                in_blocks += math.prod(value.shape)
            else:
                outside += math.prod(value.shape)
    m = cfg.model
    params = in_blocks + outside / m.tokens_per_step
    flops = {"matmul_params_per_token": params, "matmul": 6 * params, "gla": None, "total": None}
    if m.mixer == "gla":
        k = v = head_width(m)
        flops["gla"] = 3 * m.n_layers * (2 * m.chunk_size * m.n_heads * (k + v) + 4 * m.n_heads * k * v)
        flops["total"] = flops["matmul"] + flops["gla"]
    return flops


def peak_device_bytes(devices) -> Optional[int]:
    """The largest ``peak_bytes_in_use`` over ``devices``; None where the backend keeps none."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    return None if None in peaks else max(peaks)


class Report:
    """Everything measured so far, written to ``out`` after every part and by the watchdog."""

    def __init__(self, out: Path, args: argparse.Namespace, start: float):
        self.out, self.start, self.budget = out, start, args.budget_s
        self.data = {"args": dict(vars(args)), "skipped": [], "stopped": None}
        self.part = "start"
        self.lock = threading.Lock()

    def update(self, **items) -> None:
        with self.lock:
            self.data.update(items)
            self._write()

    def skip(self, what: str, why: str) -> None:
        print(f"skipped {what}: {why}", flush=True)
        with self.lock:
            self.data["skipped"].append({"what": what, "why": why})
            self._write()

    def deadline(self) -> None:
        """Watchdog: records where the budget ran out, writes and ends the process at once."""
        with self.lock:
            self.data["stopped"] = f"budget of {self.budget:g} s reached during {self.part}"
            self._write()
        print(f"device_check: {self.data['stopped']}; wrote what was measured to {self.out}", flush=True)
        os._exit(EXIT_BUDGET)

    def _write(self) -> None:
        self.data["wall_s"] = time.monotonic() - self.start
        (self.out / "device_check.json").write_text(json.dumps(self.data, indent=1))
        speed = self.data.get("speed", {}).get("rows")
        if speed:
            _write_csv(self.out / "speed.csv", speed)
        learning = self.data.get("learning", {}).get("result")
        if learning:
            row = {k: v for k, v in learning.items() if not isinstance(v, (dict, list))}
            row.update({f"baseline_{k}": v for k, v in learning["baselines"].items()})
            row.update({k: self.data["learning"][k] for k in ("steps_per_s", "planned_train_s", "wall_s")})
            _write_csv(self.out / "learning.csv", [row])


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def check_devices(expect: str) -> tuple[dict, Optional[str]]:
    """What JAX sees, and an error line when ``expect`` names a platform that is absent."""
    devices = jax.devices()
    info = {"platform": devices[0].platform, "count": len(devices), "kinds": sorted({d.device_kind for d in devices}),
            "devices": [str(d) for d in devices], "jax": jax.__version__}
    print(f"devices: {len(devices)} x {', '.join(info['kinds'])} ({info['platform']}), jax {jax.__version__}", flush=True)
    if expect != "any" and all(d.platform != expect for d in devices):
        return info, (f"--expect {expect}, but JAX sees only {info['platform']} devices "
                      f"(install the accelerator build: pip install -e '.[gpu]')")
    return info, None


def speed(args, report: Report, deadline: float) -> None:
    """Part 2 (module doc); one row per segment length, ascending."""
    mesh = sharding.make_mesh(load_config(args.config, TINY_SPEED if args.tiny else ()).mesh)
    overrides = [*(TINY_SPEED if args.tiny else ()), f"train.batch_size={args.batch_size * mesh.shape['data']}"]
    cfg = load_config(args.config, overrides)
    flops = flops_per_token(cfg)
    n_devices = mesh.devices.size
    kind = jax.devices()[0].device_kind
    peak = peak_tflops(kind)
    section = {"config": args.config, "overrides": overrides, "device_kind": kind, "devices_in_mesh": n_devices,
               "peak_tflops_per_device": peak, "flops_per_token": flops, "rows": [],
               "peak_bytes_note": "high-water mark of device memory since the process started (segments run "
                                  "ascending); None: the backend keeps no memory statistics"}
    if peak is None:
        section["mfu_note"] = f"no peak known for device kind {kind!r}: MFU not reported"
    report.update(speed=section)
    print(f"speed: {args.config} d={cfg.model.d_model} layers={cfg.model.n_layers} heads={cfg.model.n_heads} "
          f"batch {cfg.train.batch_size}, {flops['total'] or float('nan'):.4g} FLOPs/token "
          f"({flops['matmul_params_per_token']:.4g} matmul params/token), peak {_fmt(peak, 'g')} TFLOP/s x {n_devices}", flush=True)
    previous = None
    for segment_len in sorted(args.segments):
        report.part = f"speed at segment {segment_len}"
        if previous is not None:
            estimate = previous["wall_s"] * segment_len / previous["segment_len"]
            if time.monotonic() + estimate > deadline:
                report.skip(report.part, f"about {estimate:.0f} s needed, {deadline - time.monotonic():.0f} s left")
                continue
        seg_cfg = load_config(args.config, overrides + [f"train.segment_len={segment_len}"])
        start = time.monotonic()
        try:
            measured = time_training(seg_cfg, args.steps + 1)
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            report.skip(f"speed at segment {segment_len} and longer", "out of device memory: " + str(e).splitlines()[0])
            break
        row = {"segment_len": segment_len, "batch_size": seg_cfg.train.batch_size,
               "tokens_per_segment": seg_cfg.train.batch_size * segment_len * seg_cfg.model.tokens_per_step, **measured}
        row["wall_s"] = time.monotonic() - start
        row["tflops"] = None if flops["total"] is None else row["tokens_per_s"] * flops["total"] / 1e12
        row["mfu"] = None if row["tflops"] is None or peak is None else row["tflops"] / (peak * n_devices)
        row["peak_bytes_in_use"] = peak_device_bytes(jax.devices()[:n_devices])
        section["rows"].append(row)
        report.update(speed=section)
        previous = row
        print(f"  segment {segment_len:6d}: {row['tokens_per_s']:.4g} tokens/s, {row['segments_per_s']:.3g} steps/s, "
              f"{_fmt(row['tflops'], '.4g')} TFLOP/s, MFU {_fmt(row['mfu'], '.3f')}, "
              f"peak memory {_gib(row['peak_bytes_in_use'])}, XLA plan {_gib(row['compiled_total_bytes'])} "
              f"(temp {_gib(row['compiled_temp_bytes'])}), compile {row['compile_s']:.1f} s, loss {row['final_loss']:.4f}",
              flush=True)


def learning(args, report: Report, deadline: float) -> None:
    """Part 3 (module doc): choose the rung and its steps, train, evaluate, print the result line."""
    if deadline - time.monotonic() <= args.reserve_s:
        report.skip("learning", f"{deadline - time.monotonic():.0f} s left, not more than --reserve-s {args.reserve_s:g}")
        return
    overrides = list(TINY_RUNG if args.tiny else ())
    rung_names = [args.rung] if args.rung else [n for n in reversed(icrl_ladder.RUNGS) if icrl_ladder.RUNGS[n].config.is_file()]
    section = {"overrides": overrides, "candidates": {}}
    chosen = None
    for i, name in enumerate(rung_names):
        report.part = f"learning: measuring rung {name}"
        cfg = load_config(str(icrl_ladder.RUNGS[name].config), overrides)
        if args.learn_steps:
            chosen = (name, cfg, args.learn_steps, float("nan"))
            break
        row = time_training(cfg, MEASURE_SEGMENTS)
        rate = row["segments_per_s"] / cfg.optim.accumulate
        budget = deadline - time.monotonic() - args.reserve_s
        if args.learn_s is not None:
            budget = min(budget, args.learn_s)
        fit = int(rate * budget)
        section["candidates"][name] = {"steps_per_s": rate, "train_budget_s": budget, "steps_that_fit": fit,
                                       "configured_steps": cfg.train.steps}
        print(f"learning: rung {name} {rate:.3g} steps/s: {fit} steps fit in {budget:.0f} s "
              f"(configured {cfg.train.steps})", flush=True)
        if fit >= cfg.train.steps or i == len(rung_names) - 1:
            chosen = (name, cfg, min(fit, cfg.train.steps), rate)
            break
    report.update(learning=section)
    if chosen is None or chosen[2] < 1:
        report.skip("learning", "no rung config found" if chosen is None else "no training step fits the budget")
        return
    name, cfg, steps, rate = chosen
    report.part = f"learning: rung {name}, {steps} steps"
    workdir = report.out / "learning" / name
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run: a checkpoint left here would be resumed
    section.update(rung=name, steps=steps, steps_per_s=rate, planned_train_s=steps / rate)
    report.update(learning=section)
    start = time.monotonic()
    result = icrl_ladder.run_rung(name, workdir, overrides=overrides, steps=steps, n_tasks=args.tasks)
    section.update(result=result, wall_s=time.monotonic() - start, result_line=icrl_ladder.result_line(result))
    section["pngs"] = []
    for png in sorted((workdir / "eval").rglob("*.png")):
        target = report.out / f"learning_{png.parent.name}.png"
        shutil.copyfile(png, target)
        section["pngs"].append(str(target))
    report.update(learning=section)
    print(f"learning: {steps} steps planned at {rate:.3g} steps/s ({steps / rate:.0f} s), trained in "
          f"{result['train_minutes'] * 60:.0f} s; whole part {section['wall_s']:.0f} s", flush=True)
    print(section["result_line"], flush=True)


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.3f} GiB"


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="every part on CPU with tiny sizes (< 2 min)")
    p.add_argument("--out", default=str(ROOT / "runs" / "device_check"))
    p.add_argument("--budget-s", type=float, default=420.0, help="the script stops itself before this")
    p.add_argument("--expect", choices=["gpu", "tpu", "cpu", "any"], help="platform required (default gpu; tiny: any)")
    p.add_argument("--config", default=str(ROOT / "configs" / "gpu.yaml"), help="model of the speed part")
    p.add_argument("--segments", type=int, nargs="+", help="segment lengths (default 2048 4096; tiny 64 128)")
    p.add_argument("--steps", type=int, help="timed train steps per segment length (default 10; tiny 3)")
    p.add_argument("--batch-size", type=int, help="rows per device in the speed part (default 4: configs/gpu.yaml's "
                   "32 over a node of 8 GPUs; tiny 2)")
    p.add_argument("--rung", choices=list(icrl_ladder.RUNGS), help="ladder rung (default: the hardest that fits; tiny: bandit)")
    p.add_argument("--learn-s", type=float, help="training wall time of the learning part (default: what is left; tiny 15)")
    p.add_argument("--learn-steps", type=int, help="training steps of the rung instead of a budget (repeats a run)")
    p.add_argument("--reserve-s", type=float, help="kept for what the step count leaves out: loader start, compilation, "
                   "checkpoints, evaluation (default 90; tiny 45)")
    p.add_argument("--tasks", type=int, help="held-out evaluation tasks (default: the ladder's 64; tiny 4)")
    args = p.parse_args(argv)
    tiny = {"expect": "any", "segments": [64, 128], "steps": 3, "batch_size": 2, "rung": "bandit", "learn_s": 15.0, "reserve_s": 45.0, "tasks": 4}
    full = {"expect": "gpu", "segments": [2048, 4096], "steps": 10, "batch_size": 4, "reserve_s": 90.0}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.steps, args.batch_size, *args.segments) < 1:
        p.error("--steps, --batch-size and --segments must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    start = time.monotonic()
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, args, start)
    deadline = start + args.budget_s - MARGIN_S
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), report.deadline)
    watchdog.daemon = True
    watchdog.start()
    try:
        info, error = check_devices(args.expect)
        report.update(devices=info)
        if error:
            print(f"device_check: error: {error}", file=sys.stderr, flush=True)
            return 2
        speed(args, report, deadline)
        learning(args, report, deadline)
    finally:
        watchdog.cancel()
    report.part = "done"
    report.update()
    print(f"device_check: {time.monotonic() - start:.0f} s; wrote {out / 'device_check.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
