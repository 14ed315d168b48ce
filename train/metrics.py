"""Training metrics on rank 0: one JSON line per logged step (`metrics.jsonl`), TensorBoard scalars, a progress bar.

The JSONL file is appended line by line and flushed, so a crash loses nothing written; on resume, lines of steps
beyond the checkpoint (logged before the crash) are dropped, so the file always describes one training history.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    def __init__(self, out: Path, *, enabled: bool, total_steps: int, start_step: int, tensorboard: bool,
                 progress: bool) -> None:
        self.enabled = enabled
        self.path = out / METRICS_FILE
        self._writer = None
        self._bar = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        self._file = open(self.path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=start_step + 1)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not progress,
                         dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name != "step" and math.isfinite(value):
                    self._writer.add_scalar(name, value, record["step"])

    def progress(self, steps: int, loss: float, samples_per_second: float, tokens_per_second: float) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_second:.1f}",
                                  tokens_s=f"{tokens_per_second:.0f}", refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()


def _truncate_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
