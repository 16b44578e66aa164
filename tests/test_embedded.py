"""runvisor.embedded against real servers: persistence, clean stops, recovery from crashes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runvisor.embedded import UNIX_PATH_MAX, EmbeddedRedis, EmbeddedServerError, common
from tests import fix_embedded
from tests.fix_embedded import Embedded, alive, kv_get, kv_set, pg_values, pg_write, server_pids
from tests.polling import wait_until

# The fixtures of fix_embedded, visible to the tests of this module (conftest is not ours).
embedded = fix_embedded.embedded
embedded_dir = fix_embedded.embedded_dir


def test_data_persists_across_stop_and_start(embedded_dir: Path, embedded: Embedded) -> None:
    pg, kv = embedded(embedded_dir)
    db_url, kv_url = pg.start(), kv.start()
    assert db_url.startswith("postgresql://") and kv_url.startswith("unix://")
    assert pg.start() == db_url and kv.start() == kv_url  # idempotent while running
    pg_write(db_url, "row-1")
    kv_set(kv_url, "key-1", "value-1")
    pids = server_pids(embedded_dir)
    assert pg.pid in pids and kv.pid in pids

    kv.stop()
    pg.stop()
    assert [pid for pid in pids if alive(pid)] == []
    assert server_pids(embedded_dir) == []
    assert not (embedded_dir / "postgres" / "postmaster.pid").exists()
    assert not (embedded_dir / "valkey" / "valkey.pid").exists()
    assert not (embedded_dir / "valkey" / "valkey.sock").exists()
    assert pg.url is None and kv.url is None and pg.pid is None and kv.pid is None
    kv.stop()  # idempotent once stopped
    pg.stop()

    pg2, kv2 = embedded(embedded_dir)
    db_url, kv_url = pg2.start(), kv2.start()
    assert pg_values(db_url) == ["row-1"]
    assert kv_get(kv_url, "key-1") == "value-1"
    assert "appendonly yes" in (embedded_dir / "valkey" / "valkey.conf").read_text()


def test_killed_servers_do_not_block_the_next_start(embedded_dir: Path, embedded: Embedded) -> None:
    pg, kv = embedded(embedded_dir)
    db_url, kv_url = pg.start(), kv.start()
    pg_write(db_url, "committed")
    kv_set(kv_url, "acknowledged", "yes")
    old_pg, old_kv = pg.pid, kv.pid
    assert old_pg is not None and old_kv is not None
    os.kill(old_pg, signal.SIGKILL)
    os.kill(old_kv, signal.SIGKILL)
    # Right away, while the postmaster may still be a zombie holding its pid.
    assert (embedded_dir / "postgres" / "postmaster.pid").exists()
    assert (embedded_dir / "valkey" / "valkey.pid").exists()
    assert (embedded_dir / "valkey" / "valkey.sock").exists()

    pg2, kv2 = embedded(embedded_dir)
    db_url, kv_url = pg2.start(), kv2.start()
    assert pg2.pid != old_pg and kv2.pid != old_kv
    assert pg_values(db_url) == ["committed"]
    assert kv_get(kv_url, "acknowledged") == "yes"

    # Stopping the stale handles must not touch the servers that replaced them.
    kv.stop()
    pg.stop()
    assert pg2.pid is not None and alive(pg2.pid)
    assert kv_get(kv_url, "acknowledged") == "yes"
    assert pg_values(db_url) == ["committed"]


def test_stale_files_naming_reused_pids_do_not_block_start(
    embedded_dir: Path,
    embedded: Embedded,
) -> None:
    pg, kv = embedded(embedded_dir)
    pg.start()
    kv.start()
    kv.stop()
    pg.stop()
    # As after a crash and a reboot: the files name a live pid that is no server of ours
    # (this test process), the postmaster.pid is cut short and the socket is dead.
    pgdata, kvdir = embedded_dir / "postgres", embedded_dir / "valkey"
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n1700000000\n")
    (pgdata / ".s.PGSQL.5432.lock").write_text(f"{os.getpid()}\n")
    (kvdir / "valkey.pid").write_text(f"{os.getpid()}\n")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(kvdir / "valkey.sock"))

    pg2, kv2 = embedded(embedded_dir)
    db_url, kv_url = pg2.start(), kv2.start()
    pg_write(db_url, "after")
    kv_set(kv_url, "after", "1")
    assert pg2.pid != os.getpid() and kv2.pid != os.getpid()


_KILLED_SERVICE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from runvisor.embedded import EmbeddedPostgres, EmbeddedRedis
    import psycopg, redis

    pg, kv = EmbeddedPostgres(Path(sys.argv[1])), EmbeddedRedis(Path(sys.argv[1]))
    db_url, kv_url = pg.start(), kv.start()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE embedded_probe (value text)")
        conn.execute("INSERT INTO embedded_probe VALUES ('from the killed service')")
    redis.Redis.from_url(kv_url).set("from", "the killed service")
    print(json.dumps({"pg": pg.pid, "kv": kv.pid}), flush=True)
    time.sleep(60)
    """
)


def test_next_start_copes_with_servers_of_a_sigkilled_service(
    embedded_dir: Path,
    embedded: Embedded,
) -> None:
    service = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SERVICE, str(embedded_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = service.stdout.readline() if service.stdout else ""
    finally:
        service.kill()  # SIGKILL: no atexit, no stop()
        service.wait()
        if service.stdout:
            service.stdout.close()
    pids = json.loads(line)
    # Documented behaviour: the servers outlive a SIGKILLed service.
    assert alive(pids["pg"]) and alive(pids["kv"])

    pg, kv = embedded(embedded_dir)
    db_url, kv_url = pg.start(), kv.start()
    assert pg.pid == pids["pg"]  # PostgreSQL is re-attached to
    assert kv.pid != pids["kv"] and not alive(pids["kv"])  # Valkey is restarted
    assert pg_values(db_url) == ["from the killed service"]
    assert kv_get(kv_url, "from") == "the killed service"
    kv.stop()
    pg.stop()
    assert server_pids(embedded_dir) == []


def test_long_embedded_dir_gets_a_short_socket_path(embedded_dir: Path, embedded: Embedded) -> None:
    deep = embedded_dir / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(deep / "valkey" / "valkey.sock")) > UNIX_PATH_MAX
    pg, kv = embedded(deep)
    db_url, kv_url = pg.start(), kv.start()
    sock = kv.socket_path
    assert sock.parent != deep / "valkey" and len(os.fsencode(sock)) <= UNIX_PATH_MAX
    assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
    pg_write(db_url, "deep")
    kv_set(kv_url, "deep", "1")
    kv.stop()
    assert not sock.parent.exists()  # the private socket dir goes with the server
    pg.stop()


def test_two_pairs_on_different_dirs_in_one_process(embedded_dir: Path, embedded: Embedded) -> None:
    a_pg, a_kv = embedded(embedded_dir / "a")
    b_pg, b_kv = embedded(embedded_dir / "b")
    a_urls = a_pg.start(), a_kv.start()
    b_urls = b_pg.start(), b_kv.start()
    assert a_urls[0] != b_urls[0] and a_urls[1] != b_urls[1]
    pg_write(a_urls[0], "a")
    pg_write(b_urls[0], "b")
    kv_set(a_urls[1], "who", "a")
    kv_set(b_urls[1], "who", "b")
    assert pg_values(a_urls[0]) == ["a"] and pg_values(b_urls[0]) == ["b"]
    assert kv_get(a_urls[1], "who") == "a" and kv_get(b_urls[1], "who") == "b"
    a_kv.stop()
    a_pg.stop()
    assert server_pids(embedded_dir / "a") == [] and len(server_pids(embedded_dir / "b")) >= 2


def test_a_valkey_that_cannot_start_reports_its_log(
    embedded_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def bad_config(self: EmbeddedRedis, sock: Path) -> None:
        self.config_path.write_text("no-such-directive yes\n")

    monkeypatch.setattr(EmbeddedRedis, "_write_config", bad_config)
    kv = EmbeddedRedis(embedded_dir)
    with pytest.raises(EmbeddedServerError, match="no-such-directive"):
        kv.start()
    assert kv.pid is None and server_pids(embedded_dir) == []


def test_a_handle_starts_again_after_its_server_died(
    embedded_dir: Path,
    embedded: Embedded,
) -> None:
    pg, kv = embedded(embedded_dir)
    pg.start()
    kv.start()
    old_pg, old_kv = pg.pid, kv.pid
    assert old_pg is not None and old_kv is not None
    os.kill(old_pg, signal.SIGKILL)
    os.kill(old_kv, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (alive(old_pg) or alive(old_kv)) and time.monotonic() < deadline:
        time.sleep(0.01)  # SIGKILL takes effect when the process is next scheduled
    db_url, kv_url = pg.start(), kv.start()
    assert pg.pid not in (None, old_pg) and kv.pid not in (None, old_kv)
    pg_write(db_url, "again")
    kv_set(kv_url, "again", "1")


def test_a_server_already_listening_on_the_socket_is_left_alone(embedded_dir: Path) -> None:
    kvdir = embedded_dir / "valkey"
    kvdir.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(kvdir / "valkey.sock"))
        other.listen()
        kv = EmbeddedRedis(embedded_dir)
        with pytest.raises(EmbeddedServerError, match="another server already listens"):
            kv.start()
        assert (kvdir / "valkey.sock").exists() and kv.pid is None
    assert server_pids(embedded_dir) == []


def test_a_valkey_that_never_answers_ping_is_stopped_and_reported(
    embedded_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server runs, but listens elsewhere: ready is what answers PING, not a live process.
    write_config = EmbeddedRedis._write_config

    def elsewhere(self: EmbeddedRedis, sock: Path) -> None:
        write_config(self, embedded_dir / "elsewhere.sock")

    monkeypatch.setattr(EmbeddedRedis, "_write_config", elsewhere)
    kv = EmbeddedRedis(embedded_dir)
    kv.start_timeout_s = 1.0
    with pytest.raises(EmbeddedServerError, match="did not answer PING") as info:
        kv.start()
    assert "ConnectionError" in str(info.value)  # the last failure, as redis-py saw it
    assert kv.pid is None and server_pids(embedded_dir) == []


# A parent that starts `sleep 30` in its cwd, kills it on a line of input and never reaps it.
_ZOMBIE_PARENT = textwrap.dedent(
    """
    import subprocess, sys
    child = subprocess.Popen(["sleep", "30"])
    print(child.pid, flush=True)
    sys.stdin.readline()
    child.kill()
    sys.stdin.readline()
    """
)


def test_server_processes_are_told_by_name_and_working_directory(tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", _ZOMBIE_PARENT],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdin is not None and parent.stdout is not None
    try:
        pid = int(parent.stdout.readline())
        assert common.alive(pid)
        assert common.runs_in(pid, "sleep", tmp_path)
        assert not common.runs_in(pid, "sleep", other_dir)
        assert not common.runs_in(pid, "postgres", tmp_path)
        assert common.pids_in("sleep", tmp_path) == [pid]
        assert common.pids_in("sleep", other_dir) == []
        parent.stdin.write("kill\n")
        parent.stdin.flush()
        # Killed and never reaped: a zombie is no server.
        wait_until(lambda: process_state(pid) == "Z", 5, "the killed sleep to be a zombie")
        assert not common.alive(pid) and not common.runs_in(pid, "sleep", tmp_path)
        assert common.pids_in("sleep", tmp_path) == []
    finally:
        parent.kill()
        parent.wait()
        parent.stdin.close()
        parent.stdout.close()
    assert not common.alive(0) and not common.alive(-1)


def process_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat (read directly: an oracle apart from psutil)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"
