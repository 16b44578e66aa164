"""What a run can and cannot reach: the run user, the attempt's cgroup, resource limits.

The tests run as root (as CI does): the service then runs its runs as `nobody` by default.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fix_service import Api, Service, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching run users needs root")

NOBODY = pwd.getpwnam("nobody")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


def finished_output(api: Api, code: str, **fields: object) -> tuple[dict, str]:
    run = api.run_code(code, **fields)
    final = api.wait_finished(run["id"])
    return final, api.output(run["id"]).decode()


def test_runs_execute_as_nobody_with_no_supplementary_groups(service: Service) -> None:
    final, out = finished_output(service.api, "id -u; id -g; id -G; echo $HOME; echo $USER")
    assert final["status"] == "succeeded", out
    uid, gid, groups, home, user = out.split("\n")[:5]
    assert (int(uid), int(gid)) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert groups.split() == [str(NOBODY.pw_gid)]  # root's groups are gone
    assert home == str(service.data_dir / "work" / str(final["id"])) and user == "nobody"
    ready = service.api.get("/readyz", token="").json()
    assert ready["runs"]["user"] == "nobody" and ready["runs"]["uid"] == NOBODY.pw_uid


def test_a_run_cannot_reach_the_service_its_secrets_or_other_runs(
    service_factory, shared_dir: Path
) -> None:
    tokens = shared_dir / "tokens"
    tokens.write_text("admin:a-secret-from-a-file\n# a comment\nviewer:another-secret\n")
    tokens.chmod(0o600)
    service: Service = service_factory(RUNVISOR_TOKENS=None, RUNVISOR_TOKENS_FILE=str(tokens))
    api = service.api
    api.token = "a-secret-from-a-file"
    assert service.proc is not None
    # A long run whose spool another run will try to write to.
    victim = api.run_code("echo victim; sleep 30")
    wait_until(lambda: api.output(victim["id"]) == b"victim\n", 10, "the victim's first line")
    spool = service.data_dir / "spool" / str(victim["id"]) / "1.out"
    assert spool.exists()
    probes = {
        "environ": f"cat /proc/{service.proc.pid}/environ",
        "tokens_file": f"cat {tokens}",
        "data_dir": f"ls {service.data_dir}",
        "spool_dir": f"ls {service.data_dir}/spool",
        "spool_write": f"echo forged >> {spool}",
        "signal": f"kill -0 {service.proc.pid}",
        "kill": f"kill -9 {service.proc.pid}",
    }
    code = "".join(
        f"if {probe} >/dev/null 2>&1; then echo '{name}: reached'; "
        f"else echo '{name}: refused'; fi\n"
        for name, probe in probes.items()
    )
    code += "echo mine > own-file && cat own-file && echo 'cwd: written'\n"
    final, out = finished_output(api, code)
    assert final["status"] == "succeeded", out
    for name in probes:
        assert f"{name}: refused" in out, out
    assert "mine\ncwd: written" in out
    assert service.proc.poll() is None and api.get("/healthz").status_code == 200
    # The victim's stored history holds only what it printed itself.
    api.post(f"/api/v1/runs/{victim['id']}/stop", json={"grace_s": 0})
    api.wait_finished(victim["id"])
    assert api.output(victim["id"]) == b"victim\n"


def test_run_as_root_is_an_explicit_choice_and_is_logged(service_factory) -> None:
    service: Service = service_factory(RUNVISOR_RUN_AS="root")
    final, out = finished_output(service.api, "id -u")
    assert final["status"] == "succeeded" and out == "0\n"
    assert service.api.get("/readyz", token="").json()["runs"]["uid"] == 0
    assert "runs execute as root" in service.log_path.read_text()


def test_run_as_a_given_uid_and_gid(service_factory) -> None:
    service: Service = service_factory(RUNVISOR_RUN_AS="12345:23456")
    final, out = finished_output(service.api, "id -u; id -g; echo > f && stat -c %u:%g f")
    assert final["status"] == "succeeded", out
    assert out.split() == ["12345", "23456", "12345:23456"]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RUNVISOR_RUN_AS": "no-such-user-here"}, "RUNVISOR_RUN_AS: no user named"),
        ({"RUNVISOR_RUN_LIMITS": "cpu=fast"}, "RUNVISOR_RUN_LIMITS: cpu='fast'"),
        ({"RUNVISOR_RUN_LIMITS": "walltime=5"}, "RUNVISOR_RUN_LIMITS: 'walltime=5'"),
        ({"RUNVISOR_TOKENS_FILE": "/nonexistent/tokens"}, "RUNVISOR_TOKENS_FILE=/nonexistent"),
        (
            {"RUNVISOR_TOKENS_FILE": "/etc/hostname", "RUNVISOR_TOKENS": "admin:x"},
            "set one, not both",
        ),
    ],
)
def test_bad_isolation_settings_stop_start_up(
    env: dict[str, str], message: str, data_dir: Path
) -> None:
    full = {"PATH": os.environ["PATH"], "RUNVISOR_DATA_DIR": str(data_dir), **env}
    done = subprocess.run(
        [sys.executable, "-m", "runvisor", "serve"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


# ---- the attempt's cgroup: nothing of a run outlives it ------------------------------------

ESCAPE = "(setsid env -i /bin/sh -c 'echo escaped $$; exec sleep 600' &)"


def _escaped_pid(api: Api, run_id: int) -> int:
    found = wait_until(
        lambda: re.search(rb"escaped (\d+)", api.output(run_id)), 10, "the escapee's pid"
    )
    return int(found[1])


def test_an_escaped_descendant_does_not_outlive_the_normal_end_of_its_run(
    service: Service,
) -> None:
    api = service.api
    assert api.get("/readyz", token="").json()["runs"]["process_tracking"] == "cgroup"
    run = api.run_code(f"{ESCAPE}; sleep 0.5; echo main done")
    pid = _escaped_pid(api, run["id"])
    final = api.wait_finished(run["id"])
    assert final["status"] == "succeeded"
    assert final["attempts"][0]["leftovers_killed"] == 1
    wait_until(lambda: not alive(pid), 2, "the escaped sleep to be dead")


def test_an_escaped_descendant_does_not_outlive_a_stop(service: Service) -> None:
    api = service.api
    run = api.run_code(f"{ESCAPE}; sleep 600")
    pid = _escaped_pid(api, run["id"])
    assert alive(pid)
    api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 1})
    assert api.wait_finished(run["id"])["status"] == "stopped"
    wait_until(lambda: not alive(pid), 2, "the escaped sleep to be dead")
    cgroups = Path(api.get("/readyz", token="").json()["runs"]["cgroup"])
    assert not (cgroups / f"run-{run['id']}-1").exists()


def test_the_scan_fallback_still_kills_what_stays_findable(service_factory) -> None:
    """Without cgroups (RUNVISOR_PROCESS_TRACKING=scan, as where none can be created), a
    descendant that keeps the attempt's marker is found and killed; one that also clears its
    environment is the documented limit of this mode."""
    service: Service = service_factory(RUNVISOR_PROCESS_TRACKING="scan")
    api = service.api
    runs = api.get("/readyz", token="").json()["runs"]
    assert runs["process_tracking"] == "scan" and runs["cgroup"] is None
    # The main shell waits for the escapee's line: ended first, the attempt's end could kill
    # the escapee before it printed its pid.
    run = api.run_code(
        "(setsid sh -c 'echo escaped $$; exec sleep 600' &); sleep 0.5; echo main done"
    )
    pid = _escaped_pid(api, run["id"])
    final = api.wait_finished(run["id"])
    assert final["status"] == "succeeded" and final["attempts"][0]["leftovers_killed"] == 1
    wait_until(lambda: not alive(pid), 2, "the setsid sleep to be dead")


def test_an_adopted_run_keeps_its_cgroup_across_a_service_restart(service_factory) -> None:
    first: Service = service_factory("node-adopt-cg")
    api = first.api
    run = api.run_code(f"{ESCAPE}; sleep 2; echo after restart")
    pid = _escaped_pid(api, run["id"])
    first.kill()  # a crash: the run and its escapee go on
    assert alive(pid)
    second: Service = service_factory("node-adopt-cg")
    final = second.api.wait_finished(run["id"])
    assert final["status"] == "succeeded" and final["attempts"][0]["leftovers_killed"] == 1
    wait_until(lambda: not alive(pid), 2, "the escaped sleep to be dead")
    assert second.api.output(run["id"]).endswith(b"after restart\n")


# ---- resource limits ------------------------------------------------------------------------

LIMITS = "cpu=30,as=4G,fsize=10M,nofile=256,nproc=64"


def test_ulimit_inside_a_run_shows_the_configured_limits(service_factory) -> None:
    service: Service = service_factory(RUNVISOR_RUN_LIMITS=LIMITS)
    code = "for f in t v f n u; do echo $f $(ulimit -S -$f) $(ulimit -H -$f); done"
    final, out = finished_output(service.api, code)
    assert final["status"] == "succeeded", out
    shown = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    # bash shows -v in KiB and -f in 512-byte blocks
    assert shown == {
        "t": ["30", "30"],
        "v": [str(4 * 2**20)] * 2,
        "f": [str(10 * 2**10)] * 2,
        "n": ["256", "256"],
        "u": ["64", "64"],
    }


def test_fsize_stops_a_run_that_writes_too_big_a_file(service_factory) -> None:
    service: Service = service_factory(RUNVISOR_RUN_LIMITS="fsize=1M")
    final, out = finished_output(
        service.api, "head -c 2000000 /dev/zero > big; echo status $?; stat -c %s big"
    )
    assert final["status"] == "succeeded", out
    assert "status 153" in out, out  # head killed by SIGXFSZ (128 + 25) at the limit
    assert out.split()[-1] == str(2**20)


def test_a_fork_bomb_is_contained_and_stopped_with_zero_survivors(service_factory) -> None:
    nproc = 40
    service: Service = service_factory(RUNVISOR_RUN_LIMITS=f"nproc={nproc}")
    api = service.api
    bomb = "echo started; b() { b | b & }; b; sleep 600"
    run = api.run_code(bomb)
    wait_until(lambda: api.output(run["id"]).startswith(b"started"), 10, "the bomb to start")
    cgroup = Path(api.get("/readyz", token="").json()["runs"]["cgroup"]) / f"run-{run['id']}-1"

    def members() -> list[int]:
        try:
            return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    peak = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # let it push against the limit for a while
        peak = max(peak, len(members()))
        time.sleep(0.05)
    # nproc counts the run user's processes; the root wrapper is the one more in the cgroup.
    assert 2 <= peak <= nproc + 1, peak
    assert service.proc is not None and service.proc.poll() is None
    assert api.get("/healthz").status_code == 200
    pids = members()
    api.post(f"/api/v1/runs/{run['id']}/stop", json={"grace_s": 0})
    assert api.wait_finished(run["id"])["status"] == "stopped"
    wait_until(lambda: not any(alive(p) for p in pids), 3, "every process of the bomb gone")
    assert not cgroup.exists()
    # Killed processes stay zombies until the service reaps them: only live ones count.
    survivors = [pid for pid in service.run_processes() if alive(pid)]
    assert not survivors, f"processes of the bomb survived: {survivors}"


def test_a_run_cannot_reach_the_embedded_servers_files_or_sockets(service_factory) -> None:
    service: Service = service_factory(RUNVISOR_DATABASE_URL=None, RUNVISOR_REDIS_URL=None)
    api = service.api
    data = service.data_dir
    # postmaster.pid's fifth line is the directory of PostgreSQL's unix socket.
    pg_socket_dir = Path((data / "postgres" / "postmaster.pid").read_text().splitlines()[4])
    sockets = [pg_socket_dir]
    sockets += list(data.glob("valkey/*.sock")) + list(Path("/tmp").glob("runvisor-valkey-*/*"))
    probes = {
        "pg_files": f"ls {data}/postgres",
        "pg_version": f"cat {data}/postgres/PG_VERSION",
        "kv_files": f"ls {data}/valkey",
        "admin_token": f"cat {data}/admin.token",
        **{f"socket_{i}": f"test -w {path}" for i, path in enumerate(sockets)},
        "psql": f"psql -h {pg_socket_dir} -U postgres -c 'select 1'",
    }
    code = "".join(
        f"if {probe} >/dev/null 2>&1; then echo '{name}: reached'; "
        f"else echo '{name}: refused'; fi\n"
        for name, probe in probes.items()
    )
    final, out = finished_output(api, code)
    assert final["status"] == "succeeded", out
    assert out.count(": refused") == len(probes), out


def test_a_commands_limits_override_the_nodes_defaults(service_factory) -> None:
    service: Service = service_factory(RUNVISOR_RUN_LIMITS="nofile=256,cpu=30")
    api = service.api
    command = api.create_command(
        "echo $(ulimit -n) $(ulimit -t) $(ulimit -u)",
        limits={"nofile": 100, "cpu": "unlimited", "nproc": 77},
    )
    run = api.start_run(command["id"])
    final = api.wait_finished(run["id"])
    assert final["status"] == "succeeded" and final["limits"] == command["limits"]
    assert api.output(run["id"]) == b"100 unlimited 77\n"


def test_a_node_removes_its_cgroup_directory_when_it_stops(service: Service) -> None:
    cgroups = Path(service.api.get("/readyz", token="").json()["runs"]["cgroup"])
    final, _out = finished_output(service.api, "true")
    assert final["status"] == "succeeded" and cgroups.is_dir()
    assert service.stop() == 0
    assert not cgroups.exists()
