"""proctree.py: finding and killing whole attempt trees, with real processes and signals.

Survivors are checked with the independent /proc scan of fix_processes (marker and every pid
seen), not only through the module under test.
"""

# Fixtures are imported from fix_processes and requested by parameter name:
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runvisor.procs.proctree import (
    MARKER_ENV,
    find_attempt_processes,
    is_child_subreaper,
    is_zombie,
    kill_attempt_tree,
    reap_children,
    signal_all,
    signal_group,
)
from runvisor.procs.spawn import ExitStatus, ProcessIdentity, poll_exit, read_identity

from .fix_processes import (  # noqa: F401
    REPO_ROOT,
    Attempt,
    Procs,
    count_comm,
    leak_guard,
    live_tree,
    marker,
    proc_row,
    proc_table,
    procs,
    wait_until,
)

GRACE_S = 0.3


def child_env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), **extra}


def still_alive(seen: dict[int, int]) -> list[int]:
    """Pids seen earlier that still run as the very same process (same start time)."""
    alive = []
    for pid, start in seen.items():
        row = proc_row(pid)
        if row is not None and row.start == start and row.live:
            alive.append(pid)
    return alive


def stop(procs: Procs, attempt: Attempt, grace_s: float = GRACE_S) -> tuple[ExitStatus, int]:
    """The RunActor's stop: SIGTERM to the group, a grace period, then kill the whole tree."""
    assert signal_group(attempt.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    status = poll_exit(attempt.pid)
    while status is None and time.monotonic() < deadline:
        time.sleep(0.01)
        status = poll_exit(attempt.pid)
    killed = kill_attempt_tree(leader=attempt.identity, marker=procs.marker, deadline_s=10)
    return status or procs.wait_exit(attempt), killed


# --- zero survivors after stop ----------------------------------------------------------------

SCENARIOS = {
    # name: (code, how many `sleep`s must be up before stopping, min. processes the kill finds)
    "background job": ("sleep 1000 & wait", 1, 0),
    "setsid grandchild": ("setsid sleep 1000 & wait", 1, 1),
    "double-forked daemon": ("( setsid bash -c 'sleep 1000 & disown' & ) ; sleep 1000", 2, 1),
    "ignores SIGTERM": ("trap '' TERM; sleep 1000", 1, 2),  # wrapper + sleep (bash exec'd it)
    "forking loop": ("trap '' TERM; while :; do sleep 1000 & done", 20, 20),
    "forking loop of daemons": ("trap '' TERM; while :; do (setsid sleep 1000 &); done", 10, 10),
    # Left the session and dropped the marker: only its parent link gives it away, and
    # kill_attempt_tree freezes the tree first so that link is still there when it looks.
    "escaped without marker": (
        f"trap '' TERM; setsid env -u {MARKER_ENV} sleep 1000 & wait",
        1,
        3,
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_survivor_after_stop(procs: Procs, scenario: str) -> None:
    code, sleeps, min_killed = SCENARIOS[scenario]
    attempt = procs.start(code)
    before = procs.wait_tree(attempt, lambda t: count_comm(t, "sleep") >= sleeps)
    assert attempt.pid in before
    status, killed = stop(procs, attempt)
    assert status.signal in (signal.SIGTERM, signal.SIGKILL)
    assert killed >= min_killed
    # No waiting here: kill_attempt_tree returns only once nothing of the attempt runs.
    assert live_tree(procs.marker) == {}
    assert still_alive(procs.seen) == []
    leftovers = find_attempt_processes(leader=attempt.identity, marker=procs.marker)
    assert all(p.zombie for p in leftovers)


def test_kill_counts_distinct_processes(procs: Procs) -> None:
    attempt = procs.start("sleep 1000 & sleep 1001 & wait")
    tree = procs.wait_tree(attempt, lambda t: count_comm(t, "sleep") == 2)
    assert len(tree) == 4  # wrapper, bash, two sleeps
    assert kill_attempt_tree(leader=attempt.identity, marker=procs.marker) == 4
    assert procs.wait_exit(attempt) == ExitStatus(None, signal.SIGKILL)
    assert still_alive(procs.seen) == []


# --- zombies ----------------------------------------------------------------------------------


def test_zombie_leader_is_reported_but_not_waited_for(procs: Procs) -> None:
    attempt = procs.start("exit 0")
    wait_until(lambda: is_zombie(attempt.identity), 10, "the wrapper to exit")
    assert find_attempt_processes(leader=attempt.identity, marker=procs.marker) == {
        attempt.identity
    }
    assert all(p.zombie for p in find_attempt_processes(leader=attempt.identity, marker="x"))
    assert signal_all([attempt.identity], signal.SIGKILL) == 0
    started = time.monotonic()
    assert kill_attempt_tree(leader=attempt.identity, marker=procs.marker, deadline_s=5) == 0
    assert time.monotonic() - started < 1
    assert procs.wait_exit(attempt).succeeded


def test_zombie_that_is_not_our_child_does_not_block_the_kill(procs: Procs) -> None:
    # `sleep 1000` (bash exec'd into it) never reaps the short sleep: a zombie grandchild.
    attempt = procs.start("sleep 0.01 & exec sleep 1000")

    def zombie_child() -> bool:
        table = proc_table()
        parents = {r.pid for r in table.values() if r.ppid == attempt.pid and r.comm == "sleep"}
        return any(r.ppid in parents and r.state == "Z" for r in table.values())

    wait_until(zombie_child, 10, "a zombie grandchild")
    procs.tree(attempt)
    started = time.monotonic()
    assert kill_attempt_tree(leader=attempt.identity, marker=procs.marker, deadline_s=5) == 2
    assert time.monotonic() - started < 1.5
    assert procs.wait_exit(attempt) == ExitStatus(None, signal.SIGKILL)


def test_reap_children_leaves_excluded_pids_alone(procs: Procs) -> None:
    attempt = procs.start("exit 5")
    wait_until(lambda: is_zombie(attempt.identity), 10, "the wrapper to exit")
    assert attempt.pid not in [pid for pid, _ in reap_children(exclude={attempt.pid})]
    assert is_zombie(attempt.identity)
    reaped = dict(reap_children(exclude=()))
    assert os.waitstatus_to_exitcode(reaped[attempt.pid]) == 5
    assert poll_exit(attempt.pid) is None  # already reaped: not our child any more


# --- finding ----------------------------------------------------------------------------------


def test_find_by_session_marker_and_parentage(procs: Procs) -> None:
    code = f"sleep 1000 & setsid sleep 1001 & setsid env -u {MARKER_ENV} sleep 1002 & wait"
    attempt = procs.start(code)
    tree = procs.wait_tree(attempt, lambda t: count_comm(t, "sleep") == 3)
    outsider = subprocess.Popen(["sleep", "1003"], env={MARKER_ENV: procs.marker})
    unrelated = subprocess.Popen(["sleep", "1004"], env={MARKER_ENV: "another-attempt"})
    try:
        procs.seen[outsider.pid] = proc_row(outsider.pid).start  # type: ignore[union-attr]
        found = {
            p.pid for p in find_attempt_processes(leader=attempt.identity, marker=procs.marker)
        }
        assert found == set(tree) | {outsider.pid}
        assert unrelated.pid not in found
        by_marker = {p.pid for p in find_attempt_processes(leader=None, marker=procs.marker)}
        assert outsider.pid in by_marker and attempt.pid in by_marker
    finally:
        for p in (outsider, unrelated):
            p.kill()
            p.wait()
    kill_attempt_tree(leader=attempt.identity, marker=procs.marker)
    procs.wait_exit(attempt)
    with pytest.raises(ValueError):
        find_attempt_processes(leader=None, marker="")


FIND_FROM_A_MARKED_CHILD = """
import json, os
from runvisor.procs.proctree import find_attempt_processes
from runvisor.procs.spawn import read_identity
marker = os.environ["RUNVISOR_ATTEMPT_MARKER"]
me = read_identity(os.getpid())
print(json.dumps({
    "pid": os.getpid(),
    "by_marker": [p.pid for p in find_attempt_processes(leader=None, marker=marker)],
    "as_leader": [p.pid for p in find_attempt_processes(leader=me, marker=marker)],
}))
"""


def test_find_never_returns_the_caller_or_its_ancestors(procs: Procs) -> None:
    attempt = procs.start("sleep 1000")
    tree = procs.wait_tree(attempt, lambda t: count_comm(t, "sleep") == 1)
    # A caller that itself carries the marker, and passes itself as the leader.
    result = json.loads(
        subprocess.run(
            [sys.executable, "-c", FIND_FROM_A_MARKED_CHILD],
            env=child_env(**{MARKER_ENV: procs.marker}),
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    assert result["pid"] not in result["by_marker"] + result["as_leader"]
    assert os.getpid() not in result["by_marker"] + result["as_leader"]
    assert set(tree) <= set(result["by_marker"])
    # Here: our parent as the leader; we and all our ancestors are its "descendants".
    ancestors, pid = set(), os.getpid()
    while pid > 1:
        ancestors.add(pid)
        pid = proc_row(pid).ppid  # type: ignore[union-attr]
    parent = read_identity(os.getppid())
    assert not ancestors & {p.pid for p in find_attempt_processes(leader=parent, marker="x")}
    me = read_identity(os.getpid())
    assert os.getpid() not in {p.pid for p in find_attempt_processes(leader=me, marker="x")}
    kill_attempt_tree(leader=attempt.identity, marker=procs.marker)
    procs.wait_exit(attempt)


# --- signalling ------------------------------------------------------------------------------


def test_recycled_pid_is_never_signalled(procs: Procs) -> None:
    attempt = procs.start("exec sleep 1000")
    sleeper = procs.wait_tree(attempt, lambda t: count_comm(t, "sleep") == 1)
    row = next(r for r in sleeper.values() if r.comm == "sleep")
    real = ProcessIdentity(row.pid, row.start)
    # The same pid with another start time is what a recycled pid looks like.
    assert signal_all([ProcessIdentity(row.pid, row.start + 1)], signal.SIGKILL) == 0
    assert signal_all([ProcessIdentity(row.pid, 0)], signal.SIGKILL) == 0  # unknown start
    time.sleep(0.05)  # a wrongly sent SIGKILL would have landed by now
    after = proc_row(row.pid)
    assert after is not None and after.start == row.start and after.live
    assert signal_all([real], signal.SIGTERM) == 1
    assert procs.wait_exit(attempt) == ExitStatus(None, signal.SIGTERM)
    assert signal_all([real], signal.SIGTERM) == 0  # gone


def test_signal_group(procs: Procs) -> None:
    attempt = procs.start("sleep 1000")
    assert signal_group(attempt.pid, 0)
    for forbidden in (0, 1, os.getpgrp()):
        with pytest.raises(ValueError):
            signal_group(forbidden, signal.SIGKILL)
    assert signal_group(attempt.pid, signal.SIGKILL)
    procs.wait_exit(attempt)
    # A group with only its reaped leader is gone. (An unreaped zombie still counts as a member:
    # a killed orphan waiting for init to reap it keeps killpg returning True meanwhile.)
    short = procs.start("true")
    procs.wait_exit(short)
    assert not signal_group(short.pid, 0)


# --- subreaper ---------------------------------------------------------------------------------

SUBREAPER_SERVICE = """
import json, os, signal, sys, time
from pathlib import Path
from runvisor.procs.proctree import (
    enable_child_subreaper, is_child_subreaper, kill_attempt_tree, reap_children, signal_group)
from runvisor.procs.spawn import poll_exit, spawn_attempt

marker, root = sys.argv[1], Path(sys.argv[2])
enabled = enable_child_subreaper()
leader = spawn_attempt(
    code="( setsid bash -c 'sleep 1000 & disown' & ) ; sleep 1000",
    env={"PATH": "/usr/bin:/bin", "RUNVISOR_ATTEMPT_MARKER": marker},
    spool_path=root / "out", status_path=root / "status", cwd=root)
print(json.dumps({"enabled": enabled and is_child_subreaper(), "leader": leader.pid}), flush=True)
sys.stdin.readline()  # the test looks at the daemon's parent meanwhile

reaped = []
signal_group(leader.pid, signal.SIGTERM)
status, deadline = None, time.monotonic() + 5
while status is None and time.monotonic() < deadline:
    reaped += reap_children(exclude={leader.pid})
    status = poll_exit(leader.pid)
    time.sleep(0.01)
killed = kill_attempt_tree(leader=leader, marker=marker)

def children():
    me = str(os.getpid())
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{name}/stat").read().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[1] == me:
            out.append(int(name))
    return out

deadline = time.monotonic() + 5
while children() and time.monotonic() < deadline:
    reaped += reap_children(exclude=())
    time.sleep(0.01)
print(json.dumps({"status": [status.exit_code, status.signal], "killed": killed,
                  "reaped": [pid for pid, _ in reaped], "children_left": children()}), flush=True)
"""


def test_orphans_reparent_to_a_subreaper_which_reaps_them(procs: Procs) -> None:
    assert not is_child_subreaper()
    service = subprocess.Popen(
        [sys.executable, "-c", SUBREAPER_SERVICE, procs.marker, str(procs.root)],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None and service.stdin is not None
        hello = json.loads(service.stdout.readline())
        assert hello["enabled"]

        def daemon_adopted() -> int | None:
            tree = procs.tree()  # marked processes, the daemon included once it exists
            adopted = [r.pid for r in tree.values() if r.comm == "sleep" and r.ppid == service.pid]
            return adopted[0] if adopted else None

        # The daemon's parents exited: it was re-parented to the subreaper, not to init.
        daemon = wait_until(daemon_adopted, 10, "the daemon to be re-parented to the subreaper")
        service.stdin.write("go\n")
        service.stdin.flush()
        report = json.loads(service.stdout.readline())
    finally:
        service.stdin.close()  # type: ignore[union-attr]
        service.wait(timeout=30)
        service.stdout.close()  # type: ignore[union-attr]
    assert report["status"] == [None, signal.SIGTERM]
    assert report["killed"] >= 1  # the daemon, which the group SIGTERM never reached
    # The subreaper reaped the killed daemon (and the middle bash, if it outlived its parent).
    assert daemon in report["reaped"]
    assert report["children_left"] == []
    assert still_alive(procs.seen) == []
    assert not is_child_subreaper()  # the test process's own state never changed


# --- the own tree (a subreaper's descendants) -----------------------------------------------

OWN_TREE = r"""
import json, os, subprocess, time
from runvisor.procs import proctree
from runvisor.procs.proctree import (
    enable_child_subreaper, find_attempt_processes, kill_attempt_tree, MARKER_ENV)
from runvisor.procs.spawn import read_identity
assert enable_child_subreaper()
marker = "own-tree-test"
env = {**os.environ, MARKER_ENV: marker}
# A leader whose grandchild leaves the session and is orphaned: as a subreaper, we get it,
# and it stays in our tree.
leader = subprocess.Popen(
    ["bash", "-c", "(setsid sh -c 'exec sleep 600' &); sleep 600"], env=env,
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    orphans = [p for p in proctree._children(os.getpid()) if p != leader.pid]
    if orphans:
        break
    time.sleep(0.01)
ident = read_identity(leader.pid)
scanned = proctree._scan()
mine = proctree._descendants()
own = {p.pid for p in find_attempt_processes(leader=ident, marker=marker, own=True)}
machine = {p.pid for p in find_attempt_processes(leader=ident, marker=marker, own=False)}
killed = kill_attempt_tree(leader=ident, marker=marker, own=True)
leader.wait()
print(json.dumps({
    "complete": proctree._own_tree_is_complete(), "orphans": orphans, "own": sorted(own),
    "machine": sorted(machine), "killed": killed, "descendants": sorted(mine),
    "scanned": len(scanned),
    "left": [p for p in orphans if os.path.exists(f"/proc/{p}")
             and open(f"/proc/{p}/stat").read().split()[2] not in "ZX"],
}))
"""


def test_a_subreaper_finds_an_attempt_in_its_own_tree_as_a_full_scan_does() -> None:
    # RUNVISOR_PROCESS_TRACKING=scan without a /proc-wide scan: the node's own descendants hold
    # every process of an attempt it spawned, the escaped orphan included.
    result = json.loads(
        subprocess.run(
            [sys.executable, "-c", OWN_TREE],
            capture_output=True,
            check=True,
            text=True,
            timeout=60,
        ).stdout
    )
    assert result["complete"] and result["orphans"], result
    assert result["own"] == result["machine"], result
    assert set(result["orphans"]) <= set(result["own"])  # the escapee is found
    # Only the subreaper's own tree was read, far fewer processes than the machine holds.
    assert set(result["descendants"]) >= set(result["own"])
    assert len(result["descendants"]) < result["scanned"]
    assert result["killed"] == len(result["own"]) and result["left"] == []
