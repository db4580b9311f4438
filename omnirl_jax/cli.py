"""``omnirl-train``: train OmniRL from a YAML config; re-running with the same workdir resumes.

    omnirl-train --config configs/cpu.yaml [--workdir DIR] [--set train.steps=500 model.n_layers=4]

Checkpoints go to DIR/checkpoints, metrics to DIR/metrics.csv and DIR/tensorboard, the resolved
config to DIR/config.yaml (every start's in DIR/config_history). Config, workdir and checkpoint
problems end the run with a one-line error (exit status 2). SIGINT (Ctrl-C) or SIGTERM stop it
after the step in flight with a checkpoint of it (exit status 130 or 143); a second one at once.

Several processes (one per host, or several on one machine) form one run: start the same command
in each with ``--coordinator HOST:PORT --num-processes N --process-id I`` (process 0 listens on
PORT; TPU pods, SLURM and Open MPI need none of them, with ``--set mesh.distributed=true``), and
a workdir that every process sees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omnirl_jax.config import Config, load_config
from omnirl_jax.typed_config import ConfigError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` lists each option's default, except where there is none to show (None)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omnirl-train", description=__doc__.split("\n")[0].replace("``", ""),
        formatter_class=HelpFormatter,
        epilog="example: omnirl-train --config configs/cpu.yaml --workdir runs/cpu --set train.steps=1000",
    )
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--workdir", help="run directory (checkpoints, metrics, config.yaml); default runs/<config name>")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="override a config value by dotted key (value parsed as YAML), e.g. train.steps=1000",
    )
    launch = parser.add_argument_group(
        "multi-process run", "each sets mesh.distributed=true and the mesh key named")
    launch.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (mesh.coordinator_address)")
    launch.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (mesh.num_processes)")
    launch.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1 (mesh.process_id)")
    return parser.parse_args(argv)


def apply_launch_flags(cfg: Config, args: argparse.Namespace) -> None:
    """Sets the mesh keys that the multi-process flags given stand for (and mesh.distributed)."""
    flags = {"coordinator_address": args.coordinator, "num_processes": args.num_processes, "process_id": args.process_id}
    for key, value in flags.items():
        if value is not None:
            setattr(cfg.mesh, key, value)
            cfg.mesh.distributed = True


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or Path("runs") / Path(args.config).stem)
    # Imported only now, so --help stays fast.
    from omnirl_jax.checkpoint import CheckpointError
    from omnirl_jax.interrupt import Interrupted
    from omnirl_jax.sharding import initialize_distributed
    from omnirl_jax.workdir import WorkdirError

    try:
        cfg = load_config(args.config, args.set)
        apply_launch_flags(cfg, args)

        initialize_distributed(cfg.mesh)  # before any other JAX call
        from omnirl_jax.data.loader import make_loader
        from omnirl_jax.sharding import make_mesh, process_rows
        from omnirl_jax.train import train

        # Each process loads the rows of the global batch that its devices hold.
        with make_loader(
            cfg.data,
            batch_size=cfg.train.batch_size,
            segment_len=cfg.train.segment_len,
            seed=cfg.train.seed,
            rows=process_rows(make_mesh(cfg.mesh), cfg.train.batch_size),
        ) as loader:
            train(cfg, workdir, loader)
    except (ConfigError, CheckpointError) as e:
        print(f"omnirl-train: error: {e}", file=sys.stderr)
        return 2
    except WorkdirError as e:
        print(f"omnirl-train: error: --workdir {e.path}: {e.problem}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"omnirl-train: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # Ctrl-C outside the train loop: before it, or while the last save ends
        print("omnirl-train: interrupted outside the train loop; checkpoints already written are intact; "
              "run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
