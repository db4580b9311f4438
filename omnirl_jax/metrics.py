"""Training metrics to TensorBoard (tensorboardX) and a CSV file under the run's workdir.

A metric named ``group/name`` (the ``eval/`` figures) keeps its group in TensorBoard; the others
go under ``train/``. The CSV has one row per step that logged anything, a column per metric
(empty where that step did not log it). On resume, rows logged after the restored checkpoint (by
the interrupted run) are dropped from the CSV and purged from TensorBoard, so both read as one
uninterrupted run; a resume that logs new metrics adds their columns.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from tensorboardX import SummaryWriter


class MetricsWriter:
    def __init__(self, workdir: str | Path, start_step: int, columns: Sequence[str], enabled: bool = True):
        """``columns``: every metric this run may log, in CSV order (``step`` comes first)."""
        self.enabled = enabled
        if not enabled:
            return
        workdir = Path(workdir)
        self.csv_path = workdir / "metrics.csv"
        rows, old_columns = [], []
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                rows = [row for row in reader if int(row["step"]) <= start_step]
                old_columns = [c for c in reader.fieldnames or () if c != "step"]
        self.columns = ["step", *dict.fromkeys([*old_columns, *columns])]
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        unknown = set(metrics) - set(self.columns)
        if unknown:
            raise ValueError(f"metrics {sorted(unknown)} are not among the columns declared at start")
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({"step": step, **metrics})
        for name, value in metrics.items():
            self.tensorboard.add_scalar(name if "/" in name else f"train/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
