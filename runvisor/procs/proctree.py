"""Finding, signalling and killing every process of an attempt; reaping inherited orphans.

Linux only. An attempt this node spawned is looked for in the node's own tree (as a child
subreaper it inherits every orphan of its runs), read through /proc/<pid>/task/*/children: the
cost grows with the node's own processes, not the machine's. An adopted attempt (spawned before
a restart of the node) takes one pass over all of /proc. An attempt's processes are found by
session and process group (the wrapper is their leader), by parentage, and by the marker
variable every process of the attempt inherits, which also catches a grandchild that called
setsid and forked again. Identities (pid + start ticks) are re-checked right before
signalling, through a pidfd, so a recycled pid is never hit.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Collection, Iterable

from runvisor.procs.spawn import DEAD_STATES, ProcessIdentity, ProcStat, read_stat

MARKER_ENV = "RUNVISOR_ATTEMPT_MARKER"
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
_STOPPED_STATES = frozenset("Tt") | DEAD_STATES
_STOP_WAIT_S = 0.05  # per freeze round: how long to wait for SIGSTOP to take effect
_ROUND_PAUSE_S = 0.005


def _prctl(option: int, arg: ctypes.c_ulong | ctypes.c_void_p) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    return int(libc.prctl(ctypes.c_int(option), arg, zero, zero, zero))


def enable_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of init. False if unsupported.

    The caller must then reap them (reap_children), or they stay zombies.
    """
    try:
        return _prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1)) == 0
    except (OSError, AttributeError):  # no libc / no prctl symbol
        return False


def is_child_subreaper() -> bool:
    value = ctypes.c_int(0)
    try:
        ok = _prctl(PR_GET_CHILD_SUBREAPER, ctypes.cast(ctypes.byref(value), ctypes.c_void_p))
    except (OSError, AttributeError):
        return False
    return ok == 0 and value.value != 0


def _scan() -> dict[int, ProcStat]:
    procs: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))  # None if it vanished mid-scan
            if st is not None:
                procs[st.pid] = st
    return procs


def _children(pid: int) -> list[int]:
    """The children of `pid`, zombies included: each thread's list in /proc (the kernel files
    a child under the thread that forked it)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(child) for child in f.read().split())
        except OSError:  # the thread ended, or no CONFIG_PROC_CHILDREN
            continue
    return found


_own_tree_complete: bool | None = None  # None: not known yet


def _own_tree_is_complete() -> bool:
    """Whether this process's descendants hold every process it started, orphans included:
    it is a child subreaper, and the kernel lists children in /proc."""
    global _own_tree_complete
    if _own_tree_complete is None:
        _own_tree_complete = is_child_subreaper() and os.path.exists(
            f"/proc/self/task/{threading.get_native_id()}/children"
        )
    return _own_tree_complete


def _descendants() -> dict[int, ProcStat]:
    """This process's descendants, found through the children lists: O(descendants), not
    O(every process on the machine)."""
    procs: dict[int, ProcStat] = {}
    stack = _children(os.getpid())
    while stack:
        st = read_stat(stack.pop())
        if st is not None and st.pid not in procs:
            procs[st.pid] = st
            stack.extend(_children(st.pid))
    return procs


def _candidates(own: bool) -> dict[int, ProcStat]:
    """Where an attempt's processes can be: this process's own tree for an attempt it spawned
    (as a subreaper, even orphans stay in it), else every process on the machine."""
    return _descendants() if own and _own_tree_is_complete() else _scan()


def _has_marker(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:  # vanished, or not ours to read; a zombie's environ reads empty
        return False


def _protected(procs: dict[int, ProcStat]) -> set[int]:
    """This process and its ancestors (and init): never members, whatever they look like."""
    protected = {1}
    pid = os.getpid()
    while pid > 1 and pid not in protected:
        protected.add(pid)
        st = procs.get(pid) or read_stat(pid)
        if st is None:
            break
        pid = st.ppid
    return protected


def _members(
    procs: dict[int, ProcStat], leader: ProcessIdentity | None, marker: str
) -> dict[int, ProcStat]:
    if not marker:
        raise ValueError("an empty marker would match unrelated processes")
    protected = _protected(procs)
    # The leader's pid anchors session/group matching only if it is still the leader (alive or
    # unreaped zombie) or gone: a pid is not reused while a session or group still uses it as
    # its id, so members of a dead leader's session keep it reserved. A different process at that
    # pid means the pid was recycled after the whole session ended: anchor nothing.
    anchor: int | None = None
    if leader is not None and leader.start_ticks:
        at_pid = procs.get(leader.pid)
        if at_pid is None or at_pid.start_ticks == leader.start_ticks:
            anchor = leader.pid
    # Nothing started before the leader can belong to the attempt; skipping those also saves
    # reading most environ files.
    min_start = leader.start_ticks if leader is not None else 0
    entry = f"{MARKER_ENV}={marker}".encode()
    members: dict[int, ProcStat] = {}
    children: dict[int, list[int]] = {}
    for pid, st in procs.items():
        children.setdefault(st.ppid, []).append(pid)
        if pid in protected:
            continue
        in_session = anchor is not None and anchor in (pid, st.sid, st.pgid)
        if in_session or (st.start_ticks >= min_start and _has_marker(pid, entry)):
            members[pid] = st
    # Descendants of members within this scan: catches a child that both left the session and
    # dropped the marker, as long as its parent is still there (kill_attempt_tree freezes first).
    stack = list(members)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in members and child not in protected:
                members[child] = procs[child]
                stack.append(child)
    return members


def find_attempt_processes(
    *,
    leader: ProcessIdentity | None,
    marker: str,
    own: bool = False,
    outside_group: int | None = None,
) -> set[ProcessIdentity]:
    """Every process of the attempt, the leader included, zombies included (see `.zombie`).
    `own`: this process spawned the attempt (not adopted), so its tree holds all of it.
    `outside_group`: only those not in that process group (signalled as a group already).

    A zombie cannot be killed and goes away only when its parent reaps it: never wait for one
    to "die" unless it is your child (reap_children / poll_exit).
    """
    members = _members(_candidates(own), leader, marker).values()
    return {st.identity for st in members if st.pgid != outside_group}


def is_zombie(identity: ProcessIdentity) -> bool:
    """True if that very process exists and is a zombie (exited, not yet reaped)."""
    st = read_stat(identity.pid)
    return st is not None and st.start_ticks == identity.start_ticks and st.state in DEAD_STATES


def _send(identity: ProcessIdentity, sig: int) -> bool:
    """Signal exactly that process (not a zombie, not a recycled pid); False if not sent."""
    if identity.start_ticks == 0 or identity.pid <= 1:
        return False
    # A pidfd pins the process it was opened on: if the start ticks read after opening match,
    # the pidfd refers to our process and the signal cannot reach a newcomer on a recycled pid.
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return False
    except (OSError, AttributeError):  # kernel < 5.3 or filtered: plain kill, tiny race left
        pidfd = None
    try:
        st = read_stat(identity.pid)
        if st is None or st.start_ticks != identity.start_ticks or st.state in DEAD_STATES:
            return False
        if pidfd is None:
            os.kill(identity.pid, sig)
        else:
            signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def signal_all(processes: Iterable[ProcessIdentity], sig: int) -> int:
    """Send `sig` to each process that is still that process and not a zombie; count them."""
    return sum(_send(identity, sig) for identity in processes)


def signal_group(pgid: int, sig: int) -> bool:
    """killpg; False if the group is empty. Only while the leader is unreaped or is_alive():
    once the group is empty, its id is a free pid that a new group could take."""
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to signal process group {pgid}")
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def reap_children(exclude: Collection[int]) -> list[tuple[int, int]]:
    """Reap this process's zombie children except `exclude`; returns (pid, wait status) pairs.

    As a child subreaper we inherit an attempt's orphans and must reap them. `exclude` holds the
    wrappers whose status their RunActor still wants; a pid must be in it from the moment it is
    spawned (hold one lock across spawn + registration and reap_children).
    """
    reaped: list[tuple[int, int]] = []
    # A look first: none of the children waitable, none to reap, and no scan of every
    # thread's children file (a node with a thousand runs has a thousand threads).
    try:
        if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return reaped
    except ChildProcessError:  # no children at all
        return reaped
    for pid in _children(os.getpid()):
        st = read_stat(pid)
        if st is None or st.state not in DEAD_STATES or pid in exclude:
            continue
        try:
            waited, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # someone else reaped it first
            continue
        if waited:
            reaped.append((waited, status))
    return reaped


def _freeze(
    leader: ProcessIdentity | None, marker: str, end: float, own: bool
) -> set[ProcessIdentity]:
    """SIGSTOP members until a scan finds none not yet stopped; return the live members.

    Frozen processes cannot fork, and as none dies yet, nobody is re-parented: parentage stays
    intact, so the final scan sees the whole tree, including children that escaped the session
    and dropped the marker.
    """
    stopped: set[ProcessIdentity] = set()
    while True:
        live = {
            st.identity
            for st in _members(_candidates(own), leader, marker).values()
            if st.state not in DEAD_STATES
        }
        new = live - stopped
        if not new or time.monotonic() >= end:
            return live
        signal_all(new, signal.SIGSTOP)
        stopped |= new
        _wait_stopped(new, min(end, time.monotonic() + _STOP_WAIT_S))


def _wait_stopped(processes: set[ProcessIdentity], until: float) -> None:
    """SIGSTOP is asynchronous: a process may still fork until it has really stopped."""
    while processes and time.monotonic() < until:
        time.sleep(0.001)
        processes = {p for p in processes if _state(p) not in _STOPPED_STATES}


def _state(identity: ProcessIdentity) -> str:
    st = read_stat(identity.pid)
    return "X" if st is None or st.start_ticks != identity.start_ticks else st.state


def kill_attempt_tree(
    *, leader: ProcessIdentity | None, marker: str, deadline_s: float = 2.0, own: bool = False
) -> int:
    """SIGKILL every live process of the attempt, the leader included, until none is left or
    `deadline_s` has passed (blocking at most that long). Returns how many distinct processes
    were killed; zombies are neither killed nor waited for."""
    end = time.monotonic() + deadline_s
    killed: set[ProcessIdentity] = set()
    while True:
        live = _freeze(leader, marker, end, own)
        if not live:
            return len(killed)
        for identity in live:
            if _send(identity, signal.SIGKILL):
                killed.add(identity)
        if time.monotonic() >= end:
            return len(killed)
        time.sleep(_ROUND_PAUSE_S)  # let the kills land before the next scan
