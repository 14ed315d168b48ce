"""Per-stage progress: stages report records as they finish each batch; the driver draws one bar per stage.

On Ray the counts go to a small actor (fire-and-forget calls, so a stage never waits on them) that the
driver polls; in-process they go straight to the board. The board also remembers the last stage each unit
entered, which names the stage when a worker dies without a Python error, and how often a model actor started
each unit, so a unit's retries count only the deaths that happened while it ran.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from tqdm import tqdm


class ProgressBoard:
    def __init__(self) -> None:
        self.records: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)
        self.locations: dict[str, str] = {}
        self.starts: dict[str, int] = defaultdict(int)

    def advanced(self, stage_id: str, records: int, rejected: int) -> None:
        self.records[stage_id] += records
        self.rejected[stage_id] += rejected

    def unit_entered(self, unit_id: str, stage_id: str) -> None:
        self.locations[unit_id] = stage_id

    def started(self, unit_id: str, segment: str) -> int:
        """Record that ``segment`` starts on the unit; returns how many times it started there before."""
        key = f"{segment}|{unit_id}"
        self.starts[key] += 1
        return self.starts[key] - 1

    def snapshot(self) -> dict[str, Any]:
        return {"records": dict(self.records), "rejected": dict(self.rejected), "locations": dict(self.locations)}

    def clear(self) -> None:
        self.__init__()


class RayProgressReporter:
    """What a Ray worker's stage runner reports through; holds the board actor's handle."""

    def __init__(self, board: Any) -> None:
        self.board = board

    def advanced(self, stage_id: str, records: int, rejected: int) -> None:
        self.board.advanced.remote(stage_id, records, rejected)

    def unit_entered(self, unit_id: str, stage_id: str) -> None:
        self.board.unit_entered.remote(unit_id, stage_id)

    def started(self, unit_id: str, segment: str) -> int:
        """Waits for the board: the mark must be recorded before the stage can kill its worker."""
        import ray

        return ray.get(self.board.started.remote(unit_id, segment))


# A finished run's board, kept for this driver's next run in the same Ray session (see ray_progress_board).
_idle_boards: dict[tuple[str, str], Any] = {}


def _session_key() -> tuple[str, str]:
    import ray

    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_job_id()


def ray_progress_board() -> Any:
    """A cleared board actor for one run: the one an earlier run of this driver released in the same Ray session, else a
    new one. A new actor is a new worker process that imports Ray; on a small machine that start competes with the
    run's first units (measured by benchmarks/synth_throughput.py)."""
    import ray

    board = _idle_boards.pop(_session_key(), None)
    if board is not None:
        try:
            ray.get(board.clear.remote(), timeout=10)
            return board
        except (ray.exceptions.RayError, TimeoutError):
            ray.kill(board)
    return ray.remote(num_cpus=0, max_concurrency=4)(ProgressBoard).remote()


def release_progress_board(board: Any) -> None:
    """Keep a finished run's board for the next run (it ends with the driver's Ray session, like any actor it owns)."""
    import ray

    previous = _idle_boards.pop(_session_key(), None)
    if previous is not None:
        ray.kill(previous)
    _idle_boards[_session_key()] = board


class ProgressDisplay:
    """One bar per stage, refreshed from a board's snapshots on a background thread."""

    def __init__(self, stage_ids: list[str], total: int, snapshot: Any, enabled: bool, interval: float = 0.5) -> None:
        self.snapshot = snapshot
        self.interval = interval
        self.enabled = enabled
        width = max(len(s) for s in stage_ids)
        self.bars = {
            stage_id: tqdm(total=total, desc=stage_id.ljust(width), unit="sample", position=i, leave=True,
                           disable=not enabled, smoothing=0.1)
            for i, stage_id in enumerate(stage_ids)
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
            self.refresh()
        for bar in self.bars.values():
            bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        try:
            state = self.snapshot()
        except Exception:  # the board is gone at shutdown; the next refresh or the summary tells the rest
            return
        for stage_id, bar in self.bars.items():
            bar.n = min(bar.total, state["records"].get(stage_id, 0))
            bar.set_postfix(rejected=state["rejected"].get(stage_id, 0), refresh=False)
            bar.refresh()
