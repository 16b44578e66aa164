"""How this node keeps runs apart from the service and from each other: the run user and the
process-tracking mechanism, decided once at start-up and shown by /readyz."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runvisor.errors import SettingsError
from runvisor.logs import get_logger
from runvisor.procs.cgroups import CgroupTree, CgroupUnavailable, open_cgroup_tree
from runvisor.procs.run_uids import UidPool
from runvisor.procs.run_user import RunUser

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RunIsolation:
    # With run_uids: the range's first uid, standing for any of them (checks of the data dir).
    run_user: RunUser
    cgroups: CgroupTree | None
    # Why there are no cgroups (None when there are).
    no_cgroup_reason: str | None = None
    # RUNVISOR_RUN_UIDS: each attempt runs as a uid of its own from this pool.
    run_uids: UidPool | None = None

    @property
    def process_tracking(self) -> str:
        """`cgroup` (one cgroup v2 per attempt) or `scan` (/proc scans by marker and session)."""
        return "cgroup" if self.cgroups is not None else "scan"

    def describe(self) -> dict[str, Any]:
        """For /readyz: who runs execute as (`user`, `uid`, `gid` when they share one; `uids`,
        the range and how many of it are in use, when each attempt has its own) and how their
        processes are tracked."""
        shared = self.run_uids is None  # one user for every run; else a uid per attempt
        return {
            "user": self.run_user.name if shared else None,
            "uid": self.run_user.uid if shared else None,
            "gid": self.run_user.gid if shared else None,
            "uids": self.run_uids.describe() if self.run_uids is not None else None,
            "process_tracking": self.process_tracking,
            "cgroup": str(self.cgroups.root) if self.cgroups else None,
            "cgroup_controllers": sorted(self.cgroups.controllers) if self.cgroups else [],
            "no_cgroup_reason": self.no_cgroup_reason,
            "cgroup_favordynmods": self.cgroups.favordynmods if self.cgroups else None,
        }


def choose_process_tracking(mode: str, node_id: str) -> tuple[CgroupTree | None, str | None]:
    """RUNVISOR_PROCESS_TRACKING: `auto` takes cgroups where they work, `cgroup` insists on
    them (start-up fails with the reason), `scan` never uses them."""
    if mode == "scan":
        return None, "RUNVISOR_PROCESS_TRACKING=scan"
    try:
        tree = open_cgroup_tree(node_id)
    except CgroupUnavailable as exc:
        if mode == "cgroup":
            raise SettingsError(f"RUNVISOR_PROCESS_TRACKING=cgroup: {exc}") from None
        log.warning(
            "no cgroup per attempt; processes are tracked by /proc scans, and a process that "
            "leaves its session and clears its environment can outlive its run",
            reason=str(exc),
        )
        return None, str(exc)
    if not tree.favordynmods:
        log.warning(
            "cgroup v2 is mounted without favordynmods: moving each run's process into its "
            "cgroup waits for the kernel (about 10 ms a run); on Linux 6.0+, "
            f"`mount -o remount,favordynmods {tree.mount}` makes it cheap",
        )
    return tree, None
