"""Trained parameters as a release: a directory of ``config.yaml``, ``params.npz`` and
``export.json``, without optimiser state or train-loop state.

Why apart from checkpoints: an orbax checkpoint holds the Adam moments (twice the parameters),
the carried recurrent state of every batch row and the loader position, which resuming needs and
a user of a trained model does not; and a ``.npz`` of named arrays opens with numpy alone, in any
version. ``omnirl-eval --checkpoint DIR`` and ``omnirl_jax.eval.evaluate.load_model`` take such a
directory as they take a training workdir.

    python -m omnirl_jax.pretrained --workdir runs/ladder/bandit --out pretrained/bandit-5 [--step 1200]

Array names are the parameters' paths in the model (``blocks/0/mixer/q/kernel``); loading
checks every name, shape and dtype against the model ``config.yaml`` builds, and names the first
that does not fit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

PARAMS_FILE = "params.npz"
INFO_FILE = "export.json"


class ExportError(RuntimeError):
    """An export or a load cannot be done; the message is one line for the user."""


def is_export(path: str | Path) -> bool:
    return (Path(path) / PARAMS_FILE).is_file()


def _leaves(params: Any) -> dict[str, Any]:
    """``{path: array}`` of a parameter tree (``nnx.State``), paths joined by ``/``."""
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def save(out: str | Path, config_yaml: str, params: Any, info: dict) -> Path:
    """Writes ``params`` (any parameter tree) with the run's ``config.yaml`` text and ``info``."""
    import jax
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(jax.device_get(leaf)) for name, leaf in _leaves(params).items()}
    np.savez(out / PARAMS_FILE, **arrays)
    (out / "config.yaml").write_text(config_yaml)
    n_params = int(sum(a.size for a in arrays.values()))
    (out / INFO_FILE).write_text(json.dumps({**info, "parameters": n_params}, indent=1) + "\n")
    return out


def load(path: str | Path, abstract_params: Any) -> tuple[Any, dict]:
    """The parameters of the export at ``path`` in the layout of ``abstract_params`` (the model
    ``config.yaml`` builds, e.g. from ``nnx.eval_shape``), and its ``export.json``."""
    import jax
    import numpy as np

    path = Path(path)
    try:
        with np.load(path / PARAMS_FILE) as npz:
            stored = {name: npz[name] for name in npz.files}
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ExportError(f"{path}: cannot read the exported model ({type(e).__name__}: {e})") from None
    wanted = _leaves(abstract_params)
    for name, leaf in wanted.items():
        if name not in stored:
            raise ExportError(f"{path / PARAMS_FILE} lacks parameter {name} that {path / 'config.yaml'} builds")
        if stored[name].shape != leaf.shape or stored[name].dtype != leaf.dtype:
            raise ExportError(f"{path / PARAMS_FILE}: parameter {name} is {stored[name].dtype}{list(stored[name].shape)}, "
                              f"config.yaml builds {leaf.dtype}{list(leaf.shape)}")
    extra = sorted(set(stored) - set(wanted))
    if extra:
        raise ExportError(f"{path / PARAMS_FILE} holds parameter {extra[0]} that {path / 'config.yaml'} does not build")
    treedef = jax.tree_util.tree_structure(abstract_params)
    return jax.tree_util.tree_unflatten(treedef, [stored[name] for name in wanted]), info


def export(workdir: str | Path, out: str | Path, step: Optional[int] = None) -> Path:
    """The parameters of a training run's checkpoint (newest intact one without ``step``)."""
    from omnirl_jax.eval.evaluate import EvalError, load_model

    workdir, out = Path(workdir), Path(out)
    if out.exists() and any(out.iterdir()) and not is_export(out):
        raise ExportError(f"--out {out} exists and holds something other than an export")
    try:
        model = load_model(workdir, step)
    except EvalError as e:
        raise ExportError(str(e)) from None
    info = {"step": model.step, "source": str(workdir), "commit": _commit(), "exported": datetime.date.today().isoformat()}
    return save(out, (workdir / "config.yaml").read_text(), model.runner.params, info)


def _commit() -> Optional[str]:
    """The git commit of this source tree, if it is a clean checkout (else None)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m omnirl_jax.pretrained", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="an omnirl-train run directory")
    p.add_argument("--out", required=True, help="directory to write config.yaml, params.npz and export.json to")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    args = p.parse_args(argv)
    try:
        out = export(args.workdir, args.out, args.step)
    except ExportError as e:
        print(f"omnirl_jax.pretrained: error: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / INFO_FILE).read_text())
    print(f"wrote {out} (step {info['step']}, {info['parameters']} parameters, "
          f"{(out / PARAMS_FILE).stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
