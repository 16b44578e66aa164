"""SpoolLayout: where a node keeps the files of its runs, built in this one place.

`DATA_DIR/spool/RUN/ATTEMPT.out` is an attempt's output (the buffer between its processes and
PostgreSQL), `ATTEMPT.status` the exit status its wrapper writes, `ATTEMPT.uid` the uid it runs
as (with RUNVISOR_RUN_UIDS); `DATA_DIR/work/RUN` is the run's working directory. See
docs/architecture.md (The life of an attempt).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SpoolLayout:
    spool_dir: Path  # DATA_DIR/spool
    work_dir: Path  # DATA_DIR/work

    def run_spool(self, run_id: int) -> Path:
        """The run's spool directory: its attempts' output and status files."""
        return self.spool_dir / str(run_id)

    def run_work(self, run_id: int) -> Path:
        """The run's working directory, shared by its attempts."""
        return self.work_dir / str(run_id)

    def output(self, run_id: int, attempt: int) -> Path:
        return self.run_spool(run_id) / f"{attempt}.out"

    def status(self, run_id: int, attempt: int) -> Path:
        return self.run_spool(run_id) / f"{attempt}.status"

    def uid_record(self, run_id: int, attempt: int) -> Path:
        return self.run_spool(run_id) / f"{attempt}.uid"

    def spooled_runs(self) -> list[int]:
        """The runs that have a spool directory (other entries are not a run's)."""
        return [int(p.name) for p in self.spool_dir.iterdir() if p.name.isdigit()]

    def remove_run(self, run_id: int) -> None:
        """The run's spool and working directories, once it has ended (or is not this node's)."""
        shutil.rmtree(self.run_spool(run_id), ignore_errors=True)
        shutil.rmtree(self.run_work(run_id), ignore_errors=True)

    def remove_attempt(self, run_id: int, attempt: int) -> None:
        """The attempt's spool files; the next attempt writes its own, in the same working
        directory."""
        for path in (self.output(run_id, attempt), self.status(run_id, attempt)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
