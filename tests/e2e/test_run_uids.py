"""RUNVISOR_RUN_UIDS: one uid per attempt, so that a run cannot tamper with another.

The tests run as root (as CI does). With one shared run user, a run can read another's
environment in /proc, signal it and ptrace it (this kernel allows ptrace within one uid), and
write into its working directory; with a uid per attempt it can do none of that. Each probe is
also pointed at a process of the probing run itself, where it must succeed: a probe that could
never succeed would prove nothing.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.fix_service import Api, Service, free_port, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching run uids needs root")

# A range per test process, far above the machine's users (and other engineers' tests).
BASE = 3_100_000_000 + (os.getpid() % 10_000) * 100
PYTHON = "/usr/bin/python3"  # reachable by any user; a venv under /root is not
# ptrace(PTRACE_ATTACH, pid): exit 0 if attached (then detach), 1 if refused.
PTRACE = (
    f"{PYTHON} -c 'import ctypes,sys; c=ctypes.CDLL(None); p=int(sys.argv[1]); "
    "r=c.ptrace(16,p,None,None); r==0 and c.ptrace(17,p,None,None); sys.exit(r!=0)'"
)


def uids_env(first: int, last: int) -> dict[str, str]:
    return {"RUNVISOR_RUN_UIDS": f"{first}-{last}"}


def number_after(label: str, text: str) -> int:
    found = re.search(rf"^{label} (\d+)$", text, re.M)
    assert found, f"no '{label} N' line in {text!r}"
    return int(found[1])


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def proc_uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(word) for word in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


def probe_lines(probes: dict[str, str]) -> str:
    return "".join(
        f"if {probe} >/dev/null 2>&1; then echo '{name}: reached'; "
        f"else echo '{name}: refused'; fi\n"
        for name, probe in probes.items()
    )


def wait_output(api: Api, run_id: int, *patterns: bytes) -> bytes:
    def printed() -> bytes | None:
        out = api.output(run_id)
        return out if all(re.search(p, out) for p in patterns) else None

    return wait_until(printed, 15, f"run {run_id} to print {patterns!r}")


@pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"needs {PYTHON}")
def test_concurrent_runs_have_their_own_uids_and_cannot_reach_each_other(
    service_factory,
) -> None:
    first, last = BASE, BASE + 9
    service: Service = service_factory(**uids_env(first, last))
    api = service.api
    runs = api.get("/readyz", token="").json()["runs"]
    assert runs["uids"] == {"first": first, "last": last, "in_use": 0}
    assert runs["user"] is None and runs["uid"] is None
    victim_command = api.create_command(
        'echo "uid $(id -u)"; echo "pid $$"; sleep 600', env={"SECRET_TOKEN": None}
    )
    victim = api.start_run(victim_command["id"], env={"SECRET_TOKEN": "s3cret-of-the-victim"})
    out = wait_output(api, victim["id"], rb"pid \d+").decode()
    victim_uid, victim_pid = number_after("uid", out), number_after("pid", out)
    assert proc_uids(victim_pid) == [victim_uid] * 4
    assert b"s3cret-of-the-victim" in Path(f"/proc/{victim_pid}/environ").read_bytes()
    victim_work = service.data_dir / "work" / str(victim["id"])
    assert victim_work.stat().st_uid == victim_uid

    def probes(pid: str, work: str) -> dict[str, str]:
        return {
            "environ": f"grep -q s3cret /proc/{pid}/environ",
            "signal": f"kill -0 {pid}",
            "ptrace": f"{PTRACE} {pid}",
            "mem": f"( exec 3>/proc/{pid}/mem )",
            "work_dir": f"echo forged > {work}/forged",
        }

    # Its own child, in its own working directory: the same probes reach it (control).
    own = {f"own_{k}": v for k, v in probes("$child", "$PWD").items()}
    own["own_environ"] = "grep -q RUNVISOR_ATTEMPT_MARKER /proc/$child/environ"
    code = (
        'echo "uid $(id -u)"; echo "gid $(id -g)"; echo "groups $(id -G)"; '
        'echo "user $USER"; echo "home $HOME"\n'
        "sleep 600 & child=$!\n"
        + probe_lines(probes(str(victim_pid), str(victim_work)))
        + probe_lines(own)
        + "kill $child\n"
    )
    final = api.wait_finished(api.run_code(code)["id"])
    out = api.output(final["id"]).decode()
    assert final["status"] == "succeeded", out
    uid = number_after("uid", out)
    assert first <= uid <= last and first <= victim_uid <= last and uid != victim_uid
    assert number_after("gid", out) == uid and number_after("groups", out) == uid
    assert f"user run-{uid}\n" in out
    assert f"home {service.data_dir / 'work' / str(final['id'])}\n" in out
    for name in probes("", ""):
        assert f"{name}: refused" in out, out
        assert f"own_{name}: reached" in out, out
    assert not (victim_work / "forged").exists()
    # The prober's uid is free again as soon as its end shows; the victim's is still held.
    assert api.get("/readyz", token="").json()["runs"]["uids"]["in_use"] == 1
    api.post(f"/api/v1/runs/{victim['id']}/stop", json={"grace_s": 0})
    assert api.wait_finished(victim["id"])["status"] == "stopped"
    assert api.output(victim["id"]).decode() == f"uid {victim_uid}\npid {victim_pid}\n"


def test_a_uid_is_reused_only_after_its_attempt_has_ended(service_factory) -> None:
    service: Service = service_factory(**uids_env(BASE, BASE))  # a range of one uid
    api = service.api
    holder = api.run_code('echo "uid $(id -u)"; sleep 600')
    wait_output(api, holder["id"], rb"uid \d+")
    # No free uid: the next run waits, queued, rather than share one.
    waiting = api.run_code('echo "uid $(id -u)"')
    assert waiting["status"] == "queued"
    assert api.get("/readyz", token="").json()["runs"]["uids"]["in_use"] == 1
    assert api.run(waiting["id"])["status"] == "queued"
    api.post(f"/api/v1/runs/{holder['id']}/stop", json={"grace_s": 0})
    ended = api.wait_finished(holder["id"])
    final = api.wait_finished(waiting["id"])
    assert final["status"] == "succeeded"
    started = parse_time(final["attempts"][0]["started_at"])
    assert started >= parse_time(ended["attempts"][0]["finished_at"])
    assert api.output(waiting["id"]) == api.output(holder["id"]) == f"uid {BASE}\n".encode()


def test_a_restarted_run_keeps_its_files_under_its_next_attempts_uid(service_factory) -> None:
    first = BASE + 10
    service: Service = service_factory(**uids_env(first, first + 2))
    api = service.api
    holder = api.run_code("sleep 600")  # holds the lowest uid while the first attempt runs
    wait_until(lambda: api.get("/readyz", token="").json()["runs"]["uids"]["in_use"], 5, "uid")
    code = """
echo "uid $(id -u)"
if [ "$RUNVISOR_ATTEMPT" = 1 ]; then
  echo kept > f; mkdir -p d/e && echo deeper > d/e/g; chmod 700 d; exit 1
fi
cat f d/e/g && echo more >> f && echo again > d/e/h && ls -n . | grep -c " $(id -u) "
"""
    run = api.run_code(code, restart={"policy": "on-failure", "backoff_s": 3})
    restarting = api.wait_status(run["id"], "restarting")
    api.post(f"/api/v1/runs/{holder['id']}/stop", json={"grace_s": 0})
    stopped = api.wait_finished(holder["id"])
    # The lowest uid is free before the restart is due.
    assert parse_time(stopped["finished_at"]) < parse_time(restarting["next_attempt_at"])
    final = api.wait_finished(run["id"])
    out = api.output(run["id"]).decode()
    assert final["status"] == "succeeded", out
    uids = [int(n) for n in re.findall(r"^uid (\d+)$", out, re.M)]
    assert uids == [first + 1, first], out  # another uid for the second attempt
    # Its files from the first attempt are the second's: read, appended to, written into.
    assert out.endswith("kept\ndeeper\n2\n"), out


@pytest.mark.parametrize("tracking", ["cgroup", "scan"])
def test_what_an_attempts_uid_leaves_is_gone_when_it_ends(
    service_factory, shared_dir: Path, tracking: str
) -> None:
    service: Service = service_factory(
        **uids_env(BASE + 20, BASE + 29), RUNVISOR_PROCESS_TRACKING=tracking
    )
    api = service.api
    keep = shared_dir / "keep"  # the service's file in a world-writable directory
    keep.write_text("not the run's\n")
    tag = f"rv-uid-test-{os.getpid()}-{tracking}"
    paths = [
        Path(f"/tmp/{tag}-file"),
        Path(f"/tmp/{tag}-dir"),
        Path(f"/tmp/{tag}-link"),
        Path(f"/var/tmp/{tag}"),
        Path(f"/dev/shm/{tag}"),
        shared_dir / f"{tag}-theirs",
    ]
    code = f"""
echo one > /tmp/{tag}-file
mkdir -p /tmp/{tag}-dir/a/b && echo two > /tmp/{tag}-dir/a/b/f && chmod 000 /tmp/{tag}-dir/a
ln -s {keep} /tmp/{tag}-link
echo three > /var/tmp/{tag}; echo four > /dev/shm/{tag}; echo five > {shared_dir}/{tag}-theirs
ipcmk -M 4096 >/dev/null && ipcmk -Q >/dev/null && ipcmk -S 1 >/dev/null && echo ipc made
(setsid env -i /bin/sh -c 'echo escaped $$; exec sleep 600' &)
echo "uid $(id -u)"
"""
    run = api.run_code(code)
    out = wait_output(api, run["id"], rb"uid \d+", rb"escaped \d+").decode()
    uid = number_after("uid", out)
    escaped = number_after("escaped", out)
    assert "ipc made" in out
    final = api.wait_finished(run["id"])
    assert final["status"] == "succeeded"
    # As soon as the end shows, nothing of the uid is left: files, IPC objects, processes.
    left = [str(path) for path in paths if os.path.lexists(path)]
    assert not left, left
    assert keep.read_text() == "not the run's\n"
    assert not _ipc_objects_of(uid)
    assert '"event": "attempt uid released"' in service.log_path.read_text()  # JSON, as set
    # Killed with the attempt, even where /proc scans by marker cannot find it (scan): its
    # uid gives it away.
    assert final["attempts"][0]["leftovers_killed"] == 1
    wait_until(lambda: not alive(escaped), 2, "the escaped sleep to be dead")


def _ipc_objects_of(uid: int) -> list[str]:
    found = []
    for kind in ("shm", "sem", "msg"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        header = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(header, line.split(), strict=False))
            if uid in (int(row["uid"]), int(row["cuid"])):
                found.append(f"{kind}: {line}")
    return found


def test_an_adopted_attempt_keeps_its_uid_across_a_crash_of_the_service(
    service_factory,
) -> None:
    first, last = BASE + 40, BASE + 42
    node = f"node-uids-{os.getpid()}"
    before: Service = service_factory(node, **uids_env(first, last))
    api = before.api
    adopted = api.run_code('echo "uid $(id -u)"; echo "pid $$"; sleep 600; echo late')
    out = wait_output(api, adopted["id"], rb"pid \d+").decode()
    adopted_uid, adopted_pid = number_after("uid", out), number_after("pid", out)
    assert adopted_uid == first
    record = before.data_dir / "spool" / str(adopted["id"]) / "1.uid"
    assert record.read_text() == f"{first}\n"
    before.kill()  # a crash: the run goes on
    assert alive(adopted_pid)
    # What a crash may leave: a file of a uid of the range that no attempt holds.
    stale = Path(f"/tmp/rv-uid-test-{os.getpid()}-stale")
    stale.write_text("stale\n")
    os.chown(stale, last, last)
    after: Service = service_factory(node, **uids_env(first, last))
    api = after.api
    assert not stale.exists()  # the start-up sweep
    assert alive(adopted_pid) and proc_uids(adopted_pid) == [first] * 4
    # The adopted attempt's uid is held again: a new run gets another.
    newcomer = api.wait_finished(api.run_code('echo "uid $(id -u)"')["id"])
    assert api.output(newcomer["id"]) == f"uid {first + 1}\n".encode()
    assert api.get("/readyz", token="").json()["runs"]["uids"]["in_use"] == 1
    api.post(f"/api/v1/runs/{adopted['id']}/stop", json={"grace_s": 0})
    assert api.wait_finished(adopted["id"])["status"] == "stopped"
    # Ended, it is free again: the lowest uid goes to the next run.
    later = api.wait_finished(api.run_code('echo "uid $(id -u)"')["id"])
    assert api.output(later["id"]) == f"uid {first}\n".encode()


def _a_group_that_is_no_user() -> grp.struct_group | None:
    user_ids = {user.pw_uid for user in pwd.getpwall()}
    return next((g for g in grp.getgrall() if g.gr_gid not in user_ids and g.gr_gid), None)


_LONELY_GROUP = _a_group_that_is_no_user()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RUNVISOR_RUN_UIDS": "0-100"}, "RUNVISOR_RUN_UIDS='0-100': the range includes uid 0"),
        ({"RUNVISOR_RUN_UIDS": "300-200"}, "RUNVISOR_RUN_UIDS='300-200': the range is empty"),
        ({"RUNVISOR_RUN_UIDS": "lots"}, "RUNVISOR_RUN_UIDS='lots': expected START-END"),
        (
            {"RUNVISOR_RUN_UIDS": "65000-65535"},
            "RUNVISOR_RUN_UIDS=65000-65535: uid 65534 is the user 'nobody'",
        ),
        (
            {"RUNVISOR_RUN_UIDS": "200000-200100", "RUNVISOR_RUN_AS": "nobody"},
            "RUNVISOR_RUN_AS and RUNVISOR_RUN_UIDS: set one, not both",
        ),
        pytest.param(
            {"RUNVISOR_RUN_UIDS": f"{_LONELY_GROUP.gr_gid}-{_LONELY_GROUP.gr_gid}"}
            if _LONELY_GROUP
            else {},
            f"is the group {_LONELY_GROUP.gr_name!r}" if _LONELY_GROUP else "",
            marks=pytest.mark.skipif(_LONELY_GROUP is None, reason="every group is a user"),
            id="group",
        ),
    ],
)
def test_a_bad_run_uids_setting_stops_start_up(
    env: dict[str, str], message: str, data_dir: Path
) -> None:
    full = {
        "PATH": os.environ["PATH"],
        "RUNVISOR_DATA_DIR": str(data_dir),
        "RUNVISOR_PORT": str(free_port()),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-m", "runvisor", "serve"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("runvisor: bad setting: ") and message in last, done.stderr
