"""The processes of one attempt, as its RunActor sees them: the leader (the wrapper, known by
pid + start time) and either the attempt's cgroup (every process of the attempt, whatever it
does) or, where the node has no cgroups, every process carrying the attempt's marker found in
/proc. Signalling, killing and reading the exit status, with the care a pid number needs once
its process may be gone."""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from pathlib import Path

from runvisor.procs.cgroups import AttemptCgroup
from runvisor.procs.limits import apply_rlimits
from runvisor.procs.proctree import (
    find_attempt_processes,
    is_zombie,
    kill_attempt_tree,
    signal_all,
    signal_group,
)
from runvisor.procs.spawn import (
    ExitStatus,
    ProcessIdentity,
    boot_id,
    is_alive,
    poll_exit,
    read_status_file,
)

LIVENESS_LOOK_S = 2.0


class AttemptProcesses:
    def __init__(
        self,
        *,
        marker: str,
        status_path: Path,
        adopted: bool,
        cgroup: AttemptCgroup | None = None,
        limits: Mapping[str, int | None] | None = None,
    ) -> None:
        self.marker = marker
        self.status_path = status_path
        self.cgroup = cgroup
        self.limits = dict(limits or {})
        # An adopted process is not our child (the service restarted since it was spawned).
        self.adopted = adopted
        self.identity: ProcessIdentity | None = None
        self.killed = 0  # processes SIGKILLed, counted in the attempt's leftovers_killed
        self._next_liveness_look = 0.0

    def create_cgroup(self) -> None:
        """Before the spawn: the attempt's cgroup, with the limits its controllers take."""
        if self.cgroup is not None:
            self.cgroup.create(self.limits)

    def prepare(self, pid: int) -> None:
        """The wrapper is spawned and waits: put it in the cgroup, set its limits."""
        if self.cgroup is not None:
            self.cgroup.add(pid)
        apply_rlimits(pid, self.limits)

    def release(self) -> None:
        """The attempt is over: remove its cgroup (killing anything still in it)."""
        if self.cgroup is not None:
            self.cgroup.remove()

    @property
    def end_mechanism(self) -> str:
        """How the attempt's leftovers are found at its end: `cgroup`, or `scan` (/proc)."""
        return "cgroup" if self.cgroup is not None else "scan"

    @property
    def pid(self) -> int | None:
        return self.identity.pid if self.identity else None

    def adopt(self, pid: int, start_ticks: int | None, recorded_boot_id: str | None) -> bool:
        """Take over a recorded process; True if it still runs (same boot, pid, start time)."""
        self.identity = ProcessIdentity(pid, start_ticks or 0)
        same_boot = recorded_boot_id is None or recorded_boot_id == boot_id()
        return same_boot and is_alive(self.identity)

    def leader_alive(self) -> bool:
        return self.identity is not None and is_alive(self.identity)

    def leader_seen_gone(self) -> bool:
        """A safety net's look for an exit the exit watcher missed: whether the leader is gone,
        read from /proc at most every LIVENESS_LOOK_S (a look per flush of every run cost
        a tenth of the node's time with 1,000 runs printing)."""
        now = time.monotonic()
        if self.identity is None or now < self._next_liveness_look:
            return False
        self._next_liveness_look = now + LIVENESS_LOOK_S
        return not is_alive(self.identity)

    def leader(self) -> ProcessIdentity | None:
        """The leader, for finding its session and group; None when its number may belong to
        someone else now (an adopted process that is gone): then the marker alone counts."""
        if self.identity is None or (self.adopted and not is_alive(self.identity)):
            return None
        return self.identity

    def exit_status(self) -> ExitStatus | None:
        """How the leader ended: waitpid for our own child, else the wrapper's status file.

        Never waitpid an adopted number: it could reap a new child of ours that reuses it.
        """
        if self.identity is None:
            return None
        status = None if self.adopted else poll_exit(self.identity.pid)
        return status or read_status_file(self.status_path)

    def terminate(self) -> tuple[bool, int]:
        """SIGTERM, once, to every process of the attempt: (the leader's process group was
        signalled, how many processes outside it were). Once: a second SIGTERM can run the
        run's trap a second time. With a cgroup, its members (the group among them); else the
        group, then the processes found by the attempt's marker outside it."""
        if self.cgroup is not None:
            return False, self.cgroup.signal(signal.SIGTERM)
        leader = self.leader()
        group = leader is not None and signal_group(leader.pid, signal.SIGTERM)
        members = find_attempt_processes(
            leader=leader,
            marker=self.marker,
            own=not self.adopted,
            outside_group=leader.pid if group and leader is not None else None,
        )
        return group, signal_all(members, signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL whatever of the attempt is left; how many processes that was."""
        if self.cgroup is not None:
            killed = self.cgroup.kill()
        else:
            killed = kill_attempt_tree(
                leader=self.leader(), marker=self.marker, own=not self.adopted
            )
        self.killed += killed
        return killed

    def any_left(self) -> bool:
        """Whether a process of the attempt (not a zombie) still runs."""
        if self.cgroup is not None:
            return self.cgroup.populated()
        members = find_attempt_processes(
            leader=self.leader(), marker=self.marker, own=not self.adopted
        )
        return any(not is_zombie(member) for member in members)
