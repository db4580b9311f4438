"""Training metrics to TensorBoard (tensorboardX) and a CSV file under the run's workdir.

On resume, rows logged after the restored checkpoint (by the interrupted run) are dropped from
the CSV and purged from TensorBoard, so both read as one uninterrupted run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsWriter:
    def __init__(self, workdir: str | Path, start_step: int, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = Path(workdir)
        self.csv_path = workdir / "metrics.csv"
        self.columns: list[str] | None = None
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= start_step]
            if rows:
                self.columns = list(rows[0])
            self._rewrite(rows)
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def _rewrite(self, rows: list[dict]) -> None:
        with open(self.csv_path, "w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(rows)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        new_file = self.columns is None
        if new_file:
            self.columns = list(row)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
