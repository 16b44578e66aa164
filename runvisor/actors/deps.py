"""RunDeps: what the RunActors, the Supervisor and its closer work with."""

from __future__ import annotations

from dataclasses import dataclass

from runvisor.actors.output_flusher import OutputFlusher
from runvisor.actors.thread_starter import ThreadStarter
from runvisor.actors.timer import TimerService
from runvisor.config import Settings
from runvisor.procs.cgroups import CgroupTree
from runvisor.procs.exit_watcher import ExitWatcher
from runvisor.procs.run_uids import UidPool
from runvisor.procs.run_user import RunUser
from runvisor.procs.spool import SpoolLayout
from runvisor.store.journal import RunJournal
from runvisor.store.live import LiveState
from runvisor.store.waits import StoreWaits


@dataclass(frozen=True, slots=True)
class RunDeps:
    """What every RunActor works with; built once by the service."""

    settings: Settings
    journal: RunJournal
    live: LiveState
    timers: TimerService
    watcher: ExitWatcher
    flusher: OutputFlusher
    store_waits: StoreWaits  # the journal's and the live state's calls, per RunActor
    # Who runs execute as; None: the service's own user (tests of the actors alone).
    run_user: RunUser | None = None
    # One cgroup per attempt under this tree; None: processes are found by /proc scans.
    cgroups: CgroupTree | None = None
    # RUNVISOR_RUN_UIDS: each attempt runs as a uid of its own from here (run_user unused).
    run_uids: UidPool | None = None
    # Starts the RunActors' threads, so the Supervisor does not wait for each; None: it waits.
    starter: ThreadStarter | None = None

    @property
    def spool(self) -> SpoolLayout:
        """Where the runs' output, status files and working directories are."""
        return SpoolLayout(self.settings.spool_dir, self.settings.work_dir)
