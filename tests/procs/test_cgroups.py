"""cgroups.py against the real cgroup v2 hierarchy of this machine (skipped where none is)."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from runvisor.errors import SettingsError
from runvisor.procs import cgroups, isolation
from runvisor.procs.cgroups import (
    AttemptCgroup,
    CgroupTree,
    CgroupUnavailable,
    cgroup2_mount,
    favors_dynamic_moves,
    open_cgroup_tree,
    own_cgroup,
)
from runvisor.procs.limits import effective_limits, parse_run_limits
from tests.polling import wait_until


@pytest.fixture
def tree() -> Iterator[CgroupTree]:
    node = f"test-{uuid.uuid4().hex[:8]}"
    try:
        found = open_cgroup_tree(node)
    except CgroupUnavailable as exc:
        pytest.skip(f"no cgroup per attempt here: {exc}")
    yield found
    for _run, _attempt, cgroup in found.existing():
        cgroup.remove()
    found.root.rmdir()


def test_the_mount_and_own_cgroup_are_found() -> None:
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount")
    own = own_cgroup()
    assert own is not None and own.startswith("/")
    assert (mount / own.lstrip("/") / "cgroup.procs").exists()


MOUNTINFO = """\
25 30 0:22 / /sys ro,nosuid shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 {options}
42 31 0:39 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
"""


@pytest.mark.parametrize(
    ("options", "expected"),
    [("rw,favordynmods", True), ("rw,nsdelegate,favordynmods,memory_recursiveprot", True),
     ("rw", False), ("rw,nsdelegate", False)],
)  # fmt: skip
def test_the_mount_and_favordynmods_are_read_from_mountinfo(
    tmp_path: Path, options: str, expected: bool
) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(options=options))
    unified = Path("/sys/fs/cgroup/unified")
    assert favors_dynamic_moves(unified, str(mountinfo)) is expected
    assert favors_dynamic_moves(Path("/sys/fs/cgroup/cpu"), str(mountinfo)) is False  # v1
    assert favors_dynamic_moves(Path("/elsewhere"), str(mountinfo)) is False
    assert favors_dynamic_moves(unified, str(tmp_path / "missing")) is False
    assert cgroup2_mount(str(mountinfo)) == unified  # the same reading of mountinfo
    assert cgroup2_mount(str(tmp_path / "missing")) is None


def test_the_node_knows_whether_its_cgroup_mount_favors_moves(tree: CgroupTree) -> None:
    options = [
        line.split(" - ")[1].split()[2].split(",")
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == str(tree.mount) and " - cgroup2 " in line
    ]
    assert tree.favordynmods is ("favordynmods" in options[0])


def test_a_setsid_env_i_orphan_stays_in_the_cgroup_and_dies_with_it(tree: CgroupTree) -> None:
    cgroup = tree.attempt(7, 1)
    cgroup.create({})
    gate_r, gate_w = os.pipe()
    leader = subprocess.Popen(
        ["/bin/sh", "-c", "read _; (setsid env -i sleep 600 &); echo $$"],
        stdin=gate_r,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(gate_r)
    cgroup.add(leader.pid)
    os.write(gate_w, b"go\n")
    os.close(gate_w)
    leader.wait(10)
    assert leader.stdout is not None
    leader.stdout.close()
    orphans = wait_until(lambda: cgroup.pids(), 5, "the orphan in the cgroup")
    assert cgroup.populated() and len(orphans) == 1
    assert cgroup.kill() == 1
    assert not cgroup.populated()
    cgroup.remove()
    assert not cgroup.exists()
    assert [name for _r, _a, name in tree.existing()] == []


def test_signal_reaches_every_member_and_only_members(tree: CgroupTree) -> None:
    cgroup = tree.attempt(8, 2)
    cgroup.create({})
    inside = subprocess.Popen(["sleep", "600"])
    outside = subprocess.Popen(["sleep", "600"])
    try:
        cgroup.add(inside.pid)
        assert cgroup.signal(signal.SIGTERM) == 1
        assert inside.wait(5) == -signal.SIGTERM
        assert outside.poll() is None
    finally:
        outside.kill()
        outside.wait()
        inside.kill()
        inside.wait()
    cgroup.remove()


def test_existing_lists_attempt_cgroups_by_run_and_attempt(tree: CgroupTree) -> None:
    for run, attempt in ((3, 1), (3, 2), (12, 1)):
        tree.attempt(run, attempt).create({})
    (tree.root / "not-an-attempt").mkdir()
    try:
        assert sorted((r, a) for r, a, _cg in tree.existing()) == [(3, 1), (3, 2), (12, 1)]
    finally:
        (tree.root / "not-an-attempt").rmdir()


def test_remove_of_a_missing_cgroup_is_fine(tree: CgroupTree) -> None:
    cgroup = tree.attempt(99, 9)
    cgroup.remove()
    assert cgroup.kill() == 0 and not cgroup.populated() and cgroup.pids() == []


def test_controller_limits_follow_the_enabled_controllers() -> None:
    limits = effective_limits(parse_run_limits("as=1G,nproc=50,cpu=9"), {"nproc": "unlimited"})
    assert limits == {"as": 2**30, "nproc": None, "cpu": 9}
    both = AttemptCgroup(Path("/x/run-1-1"), Path("/x"), frozenset({"memory", "pids"}))
    assert both.controller_limits(limits) == {"memory.max": str(2**30), "pids.max": "max"}
    none = AttemptCgroup(Path("/x/run-1-1"), Path("/x"), frozenset())
    assert none.controller_limits(limits) == {}


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("", {}),
        ("cpu=5", {"cpu": 5}),
        (" as = 2g , fsize=512K ", {"as": 2 * 2**30, "fsize": 512 * 2**10}),
        ("nofile=unlimited,nproc=100", {"nofile": "unlimited", "nproc": 100}),
    ],
)
def test_parse_run_limits(raw: str, expected: dict[str, object]) -> None:
    assert parse_run_limits(raw) == expected


@pytest.mark.parametrize(
    "raw", ["cpu", "cpu=", "cpu=-1", "cpu=0", "cpu=1G", "wall=5", "as=9" * 30, "cpu=1,cpu=2"]
)
def test_bad_run_limits_are_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="RUNVISOR_RUN_LIMITS"):
        parse_run_limits(raw)


@pytest.mark.parametrize("favored", [True, False])
def test_a_mount_without_favordynmods_is_warned_about_at_start(
    monkeypatch: pytest.MonkeyPatch, favored: bool
) -> None:
    if cgroup2_mount() is None:
        pytest.skip("no cgroup2 mount")
    monkeypatch.setattr(cgroups, "favors_dynamic_moves", lambda mount: favored)
    node = f"test-{uuid.uuid4().hex[:8]}"
    with capture_logs() as logs:
        found, reason = isolation.choose_process_tracking("auto", node)
    if found is None:
        pytest.skip(f"no cgroup per attempt here: {reason}")
    try:
        warned = [e for e in logs if "favordynmods" in e["event"]]
        assert found.favordynmods is favored
        assert len(warned) == (0 if favored else 1)
        if warned:
            assert f"mount -o remount,favordynmods {found.mount}" in warned[0]["event"]
    finally:
        found.root.rmdir()
