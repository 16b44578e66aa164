"""The uid pool of RUNVISOR_RUN_UIDS, its start-up checks, and the sweep of what a uid left:
real files, processes and IPC objects of real uids (the tests run as root)."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runvisor.errors import SettingsError
from runvisor.procs import uid_sweep
from runvisor.procs.run_uids import UidPool, check_uid_range, read_uid_file
from runvisor.procs.spool import SpoolLayout
from runvisor.procs.uid_range import UidRange
from tests.polling import wait_until

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="other uids need root")
BASE = 3_200_000_000 + (os.getpid() % 10_000) * 100


@pytest.fixture
def roots() -> Iterator[tuple[Path, Path, Path]]:
    """A work root, a spool root and a world-writable directory standing in for /tmp."""
    top = Path(tempfile.mkdtemp(prefix="runvisor-test-uids-"))
    top.chmod(0o711)  # traversable by the test uids, as a data dir is
    work, spool, shared = top / "work", top / "spool", top / "shared"
    for path in (work, spool, shared):
        path.mkdir()
    shared.chmod(0o1777)
    yield work, spool, shared
    subprocess.run(["rm", "-rf", str(top)], check=False)


def make_pool(roots: tuple[Path, Path, Path], first: int, last: int) -> UidPool:
    work, spool, shared = roots
    pool = UidPool(
        UidRange(first, last),
        setpriv="/usr/bin/setpriv",
        spool=SpoolLayout(spool, work),
        sweep_dirs=(shared,),
    )
    pool.open()
    return pool


# ---- allocation -----------------------------------------------------------------------------


def test_the_lowest_free_uid_is_taken_and_none_is_handed_out_twice(roots) -> None:
    pool = make_pool(roots, BASE, BASE + 2)
    assert [pool.take(run, 1) for run in (1, 2, 3)] == [BASE, BASE + 1, BASE + 2]
    assert pool.take(1, 1) == BASE  # the same attempt asking again: its own uid
    assert pool.take(4, 1) is None and not pool.available()  # exhausted: nobody shares
    assert pool.release(2, 1) is not None and pool.release(2, 1) is None  # once only
    assert pool.available() and pool.take(4, 1) == BASE + 1
    assert pool.in_use() == 3 and pool.describe() == {"first": BASE, "last": BASE + 2, "in_use": 3}


def test_nothing_is_handed_out_before_the_pool_is_opened(roots) -> None:
    work, spool, _shared = roots
    pool = UidPool(UidRange(BASE, BASE), setpriv="x", spool=SpoolLayout(spool, work))
    assert not pool.available() and pool.take(1, 1) is None
    pool.open()
    assert pool.take(1, 1) == BASE


def test_an_adopted_attempt_holds_its_recorded_uid_again(roots) -> None:
    first = make_pool(roots, BASE, BASE + 3)
    assert first.take(7, 2) == BASE and first.take(8, 1) == BASE + 1
    first.spool.run_spool(7).mkdir()  # a RunActor makes its run's spool dir first
    first.record(7, 2)
    assert read_uid_file(first.record_path(7, 2)) == BASE
    # A restart: a new pool, nothing held, not open yet.
    work, spool, _shared = roots
    second = UidPool(UidRange(BASE, BASE + 3), setpriv="x", spool=SpoolLayout(spool, work))
    assert second.hold_recorded(7, 2) == BASE
    assert second.hold_recorded(8, 1) is None  # never recorded: nothing to hold
    assert not second.hold(9, 1, BASE)  # held by another attempt
    assert not second.hold(9, 1, BASE + 99)  # outside the range
    second.open()
    assert second.take(10, 1) == BASE + 1
    assert second.release(7, 2) is not None
    assert not second.record_path(7, 2).exists()  # released: no longer held after a restart


def test_concurrent_takes_and_releases_never_share_a_uid(roots) -> None:
    pool = make_pool(roots, BASE, BASE + 3)
    owners: dict[int, int] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def worker(worker_id: int) -> None:
        for attempt in range(1, 30):
            uid = pool.take(worker_id, attempt)
            if uid is None:
                continue
            with lock:
                if uid in owners:
                    errors.append(f"{uid} held by {owners[uid]} and {worker_id}")
                owners[uid] = worker_id
            with lock:
                del owners[uid]
            pool.release(worker_id, attempt)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and pool.in_use() == 0


@ROOT_ONLY
def test_a_uid_whose_files_a_pass_could_not_all_reach_is_not_reused_yet(roots) -> None:
    work, spool, shared = roots
    uid = BASE + 70
    pool = UidPool(
        UidRange(uid, uid),
        setpriv="x",
        spool=SpoolLayout(spool, work),
        sweep_dirs=(shared,),
        max_entries=3,
    )
    pool.open()
    assert pool.take(1, 1) == uid
    for n in range(5):
        (shared / f"f{n}").write_text("x")
        os.chown(shared / f"f{n}", uid, uid)
    swept = pool.release(1, 1)
    assert swept is not None and swept.files == 3 and swept.entries_exhausted
    assert not pool.available() and pool.take(2, 1) is None  # two of its files are left
    pool.resweep()
    assert os.listdir(shared) == [] and pool.available() and pool.take(2, 1) == uid


# ---- start-up checks ------------------------------------------------------------------------


def test_a_service_that_is_not_root_cannot_use_a_range() -> None:
    with pytest.raises(SettingsError, match=r"^RUNVISOR_RUN_UIDS=200000-200009: .*needs root"):
        check_uid_range(UidRange(200000, 200009), run_as=None, euid=1000)


def test_a_range_holding_a_user_or_set_beside_run_as_is_refused() -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    with pytest.raises(SettingsError, match="is the user 'nobody'"):
        check_uid_range(UidRange(nobody - 1, nobody + 1), run_as=None, euid=0)
    with pytest.raises(SettingsError, match="set one, not both"):
        check_uid_range(UidRange(BASE, BASE + 1), run_as="nobody", euid=0)


def test_a_range_outside_the_user_namespace_mapping_is_refused(tmp_path: Path) -> None:
    uid_map = tmp_path / "uid_map"
    uid_map.write_text("         0     100000      65536\n")
    with pytest.raises(SettingsError, match="not every uid of the range is mapped"):
        check_uid_range(UidRange(200000, 200009), run_as=None, euid=0, uid_map=str(uid_map))
    assert check_uid_range(
        UidRange(60000, 60009), run_as=None, euid=0, uid_map=str(uid_map)
    ).endswith("setpriv")


# ---- the sweep ------------------------------------------------------------------------------


def as_uid(uid: int, *argv: str) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]


@ROOT_ONLY
def test_the_sweep_removes_the_uids_files_and_nothing_else(roots) -> None:
    work, _spool, shared = roots
    uid, other = BASE + 50, BASE + 51
    outside = work.parent / "outside"
    outside.write_text("the service's\n")
    script = (
        f"echo a > {shared}/file; mkdir -p {shared}/dir/x/y; echo b > {shared}/dir/x/y/f; "
        f"chmod 000 {shared}/dir/x; ln -s {outside} {shared}/link; "
        f"mkdir -m 1777 {shared}/open"
    )
    subprocess.run(as_uid(uid, "/bin/sh", "-c", script), check=True)
    subprocess.run(as_uid(other, "/bin/sh", "-c", f"echo c > {shared}/open/theirs"), check=True)
    subprocess.run(as_uid(uid, "/bin/sh", "-c", f"echo d > {shared}/open/mine"), check=True)
    (shared / "roots").write_text("root's\n")
    removed, exhausted = uid_sweep.remove_files_of(uid.__eq__, (shared,))
    # /open is the uid's too: removed whole, the other uid's file in it included.
    assert sorted(os.listdir(shared)) == ["roots"] and removed == 4 and not exhausted
    assert outside.read_text() == "the service's\n"  # the link went, not its target


@ROOT_ONLY
def test_the_sweep_enters_only_directories_the_uid_could_write_and_is_bounded(roots) -> None:
    _work, _spool, shared = roots
    uid = BASE + 52
    (shared / "closed").mkdir(mode=0o755)  # root's, not writable by the uid
    planted = shared / "closed" / "planted"
    planted.write_text("x")
    os.chown(planted, uid, uid)  # cannot have been written by the uid: not looked at
    (shared / "sticky").mkdir()
    (shared / "sticky").chmod(0o1777)
    for n in range(5):
        mine = shared / "sticky" / f"f{n}"
        mine.write_text("x")
        os.chown(mine, uid, uid)
    assert uid_sweep.remove_files_of(uid.__eq__, (shared,)) == (5, False)
    assert planted.exists()
    for n in range(5):
        (shared / "sticky" / f"g{n}").write_text("x")
        os.chown(shared / "sticky" / f"g{n}", uid, uid)
    removed, exhausted = uid_sweep.remove_files_of(uid.__eq__, (shared,), max_entries=3)
    assert exhausted and removed <= 3


@ROOT_ONLY
def test_the_sweep_kills_every_process_of_the_uid_however_it_hid(roots) -> None:
    uid = BASE + 53
    # A process that left its session and cleared its environment, and a small fork loop.
    subprocess.run(
        as_uid(
            uid, "/bin/sh", "-c", "(setsid env -i sleep 600 &); (while :; do sleep 0.01; done &)"
        ),
        check=True,
    )
    wait_until(lambda: len(uid_sweep.processes_of(uid.__eq__)) >= 2, 5, "the processes")
    bystander = subprocess.Popen(as_uid(uid + 1, "sleep", "600"))
    try:
        killed, left = uid_sweep.kill_processes_of(uid.__eq__)
        assert killed >= 2 and left == 0
        assert not uid_sweep.processes_of(uid.__eq__)
        assert bystander.poll() is None  # another uid's process is not touched
    finally:
        bystander.kill()
        bystander.wait()


@ROOT_ONLY
def test_the_sweep_removes_the_uids_sysv_ipc_objects(roots) -> None:
    uid = BASE + 54
    for kind in ("-M", "-Q", "-S"):
        args = [kind, "4096"] if kind == "-M" else [kind, "1"] if kind == "-S" else [kind]
        subprocess.run(as_uid(uid, "ipcmk", *args), check=True, capture_output=True)
    mine = subprocess.run(["ipcmk", "-M", "1024"], check=True, capture_output=True, text=True)
    own_id = int(mine.stdout.split()[-1])
    try:
        assert uid_sweep.remove_ipc_of(uid.__eq__) == 3
        assert uid_sweep.remove_ipc_of(uid.__eq__) == 0
        assert f" {own_id} " in Path("/proc/sysvipc/shm").read_text()
    finally:
        subprocess.run(["ipcrm", "-m", str(own_id)], check=False)


# ---- the working directory between attempts -------------------------------------------------


@ROOT_ONLY
def test_a_work_dir_goes_to_the_next_attempts_uid_and_to_nobody_between(roots) -> None:
    work, _spool, _shared = roots
    pool = make_pool(roots, BASE + 60, BASE + 61)
    run_dir = work / "5"
    run_dir.mkdir(mode=0o700)
    old, new = BASE + 60, BASE + 61
    os.chown(run_dir, old, old)
    script = f"mkdir -p {run_dir}/sub && echo x > {run_dir}/sub/f && ln -s /etc/passwd {run_dir}/l"
    subprocess.run(as_uid(old, "/bin/sh", "-c", script), check=True)
    (run_dir / "root-file").write_text("r")
    os.link(run_dir / "sub" / "f", run_dir / "hard")  # two links: perhaps not the run's
    run_dir.chmod(0o777)  # the run opened it to everyone
    assert uid_sweep.take_back(run_dir, old.__eq__)
    st = run_dir.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
    pool.hand_over_work_dir(run_dir, new)
    assert run_dir.stat().st_uid == new
    assert (run_dir / "sub").stat().st_uid == new
    assert os.lstat(run_dir / "l").st_uid == new and os.stat("/etc/passwd").st_uid == 0
    assert (run_dir / "root-file").stat().st_uid == 0
    assert (run_dir / "hard").stat().st_uid == old
