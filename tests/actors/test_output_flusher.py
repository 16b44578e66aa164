"""The output flusher (actors/output_flusher.py) against a real PostgreSQL and Redis: the due
spools of many attempts are stored in one flush (one group-commit batch), byte-exact, each
pump moving on and no RunActor told anything; a pump its RunActor holds, or has retired, is
left alone; a run this node lost has its RunActor told Superseded; a run past a limit that
stops it has its RunActor told so, once; a spool with more than a batch waiting is flushed
again at once; while PostgreSQL is away nothing moves (but the output's growth is seen, for
stuck_after_s), and afterwards every byte is stored."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pykka
import pytest

from runvisor import protocol as m
from runvisor.actors.output_flusher import OutputFlusher
from runvisor.actors.output_pump import BATCH_BYTES, OutputPump
from runvisor.models import Run
from runvisor.store.journal import RunJournal, open_journal
from runvisor.store.live import LiveState
from tests.fix_journal import claimed_run, stored_output
from tests.fix_proxy import TcpProxy, proxied_database_url
from tests.polling import wait_until

NODE = "output-flusher-test-node"
NO_CAP = 1 << 40


class Told(pykka.ThreadingActor):
    """A RunActor's stand-in: what it is told goes to `inbox`."""

    def __init__(self, inbox: queue.SimpleQueue[Any]) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> None:
        self.inbox.put(message)


@pytest.fixture
def batches() -> list[int]:
    """The sizes of the journal's group-commit batches, in order."""
    return []


@pytest.fixture
def journal(database_url: str, batches: list[int]) -> Iterator[RunJournal]:
    journal = open_journal(
        database_url, node_id=NODE, on_batch=lambda size, _seconds: batches.append(size)
    )
    yield journal
    journal.close()


Inbox = queue.SimpleQueue[Any]


@pytest.fixture
def run_actor() -> Iterator[Callable[[], tuple[pykka.ActorRef[Any], Inbox]]]:
    """A RunActor's stand-in of its own (the flusher keeps an entry per RunActor)."""
    refs: list[pykka.ActorRef[Any]] = []

    def start() -> tuple[pykka.ActorRef[Any], Inbox]:
        inbox: Inbox = queue.SimpleQueue()
        refs.append(Told.start(inbox))
        return refs[-1], inbox

    yield start
    for ref in refs:
        ref.stop()


def claimed_runs(database_url: str, journal: RunJournal, count: int) -> list[Run]:
    return [claimed_run(database_url, journal) for _ in range(count)]


def pump_of(
    run: Run, spool: Path, journal: RunJournal, live: LiveState, max_output_bytes: int = NO_CAP
) -> OutputPump:
    return OutputPump(
        run_id=run.id,
        attempt=run.attempt,
        spool_path=spool,
        base_offset=0,
        stored_in_spool=0,
        max_output_bytes=max_output_bytes,
        journal=journal,
        live=live,
    )


def spooled(tmp_path: Path, run: Run, data: bytes) -> Path:
    spool = tmp_path / f"{run.id}.out"
    spool.write_bytes(data)
    return spool


StartRunActor = Callable[[], tuple[pykka.ActorRef[Any], Inbox]]


def test_the_due_spools_of_many_attempts_are_stored_in_one_batch(
    database_url: str,
    journal: RunJournal,
    live: LiveState,
    run_actor: StartRunActor,
    batches: list[int],
    tmp_path: Path,
) -> None:
    runs = claimed_runs(database_url, journal, 7)
    flusher = OutputFlusher(journal, flush_interval_s=0)  # not started: flushed by the test
    watched = []
    for index, run in enumerate(runs[:6]):
        spool = spooled(tmp_path, run, f"run {run.id} line {index}\n".encode() * (index + 1))
        ref, inbox = run_actor()
        pump = pump_of(run, spool, journal, live)
        flusher.watch(ref, pump)
        watched.append((pump, inbox))
    idle = pump_of(runs[6], spooled(tmp_path, runs[6], b""), journal, live)
    flusher.watch(run_actor()[0], idle)

    assert flusher.flush_due() is False  # nothing more waiting
    assert batches == [6]  # one transaction for all of them; none for the idle spool
    for pump, inbox in watched:
        assert stored_output(database_url, pump.run_id) == pump.spool_path.read_bytes()
        assert pump.position == pump.spool_path.stat().st_size
        assert inbox.empty()  # no RunActor is told anything (nor woken)
    assert flusher.flush_due() is False and batches == [6]  # nothing new: no write
    with watched[0][0].spool_path.open("ab") as spool:
        spool.write(b"more\n")
    assert flusher.flush_due() is False and batches == [6, 1]
    assert stored_output(database_url, runs[0].id).endswith(b"line 0\nmore\n")


def test_a_pump_its_run_actor_holds_or_retired_is_left_alone(
    database_url: str,
    journal: RunJournal,
    live: LiveState,
    run_actor: StartRunActor,
    tmp_path: Path,
) -> None:
    held_run, retired_run = claimed_runs(database_url, journal, 2)
    flusher = OutputFlusher(journal, flush_interval_s=0)
    held = pump_of(held_run, spooled(tmp_path, held_run, b"held\n"), journal, live)
    retired = pump_of(retired_run, spooled(tmp_path, retired_run, b"retired\n"), journal, live)
    flusher.watch(run_actor()[0], held)
    flusher.watch(run_actor()[0], retired)
    retired.retire()
    with held.lock:  # its RunActor is storing it (its attempt ends)
        assert flusher.flush_due() is False
    assert stored_output(database_url, held_run.id) == b""
    assert flusher.flush_due() is False  # free again: stored
    assert stored_output(database_url, held_run.id) == b"held\n"
    assert stored_output(database_url, retired_run.id) == b"" and retired.position == 0


def test_a_run_this_node_lost_has_its_run_actor_told_superseded(
    database_url: str,
    journal: RunJournal,
    live: LiveState,
    run_actor: StartRunActor,
    tmp_path: Path,
) -> None:
    lost, kept = claimed_runs(database_url, journal, 2)
    with psycopg.connect(database_url, autocommit=True) as conn:  # taken over by another node
        conn.execute("UPDATE runs SET node = 'another-node' WHERE id = %s", (lost.id,))
    flusher = OutputFlusher(journal, flush_interval_s=0)
    (lost_ref, lost_inbox), (kept_ref, kept_inbox) = run_actor(), run_actor()
    lost_pump = pump_of(lost, spooled(tmp_path, lost, b"lost\n"), journal, live)
    flusher.watch(lost_ref, lost_pump)
    flusher.watch(kept_ref, pump_of(kept, spooled(tmp_path, kept, b"kept\n"), journal, live))
    assert flusher.flush_due() is False
    assert isinstance(lost_inbox.get(timeout=5), m.Superseded)
    assert lost_pump.position == 0 and stored_output(database_url, lost.id) == b""
    assert stored_output(database_url, kept.id) == b"kept\n" and kept_inbox.empty()
    with lost_pump.spool_path.open("ab") as spool:
        spool.write(b"more\n")
    flusher.flush_due()
    assert lost_inbox.empty()  # no longer watched: told once


def test_a_run_past_a_limit_that_stops_it_has_its_run_actor_told_once(
    database_url: str,
    journal: RunJournal,
    live: LiveState,
    run_actor: StartRunActor,
    tmp_path: Path,
) -> None:
    stopping, truncating = claimed_runs(database_url, journal, 2)
    flusher = OutputFlusher(journal, flush_interval_s=0)
    (stop_ref, stop_inbox), (cut_ref, cut_inbox) = run_actor(), run_actor()
    stop_pump = pump_of(stopping, spooled(tmp_path, stopping, b"x" * 9), journal, live, 10)
    cut_pump = pump_of(truncating, spooled(tmp_path, truncating, b"y" * 50), journal, live, 10)
    flusher.watch(stop_ref, stop_pump, stops_at_limit=True)
    flusher.watch(cut_ref, cut_pump, stops_at_limit=False)
    flusher.flush_due()
    assert stop_inbox.empty()  # 9 bytes of 10: not past it
    with stop_pump.spool_path.open("ab") as spool:
        spool.write(b"x" * 5)
    flusher.flush_due()
    assert isinstance(stop_inbox.get(timeout=5), m.OutputLimitPassed)
    with stop_pump.spool_path.open("ab") as spool:
        spool.write(b"x" * 5)
    flusher.flush_due()
    assert stop_inbox.empty() and cut_inbox.empty()  # once; never for "truncate"


def test_a_spool_with_more_than_a_batch_waiting_is_flushed_again_at_once(
    database_url: str,
    journal: RunJournal,
    live: LiveState,
    run_actor: StartRunActor,
    tmp_path: Path,
) -> None:
    (run,) = claimed_runs(database_url, journal, 1)
    data = bytes(range(256)) * ((BATCH_BYTES + 1000) // 256)
    pump = pump_of(run, spooled(tmp_path, run, data), journal, live)
    flusher = OutputFlusher(journal, flush_interval_s=3600)  # only what piles up is due
    flusher.watch(run_actor()[0], pump)
    assert flusher.flush_due() is True and pump.position == BATCH_BYTES
    assert flusher.flush_due() is False and pump.position == len(data)
    assert stored_output(database_url, run.id) == data


def test_while_postgres_is_away_nothing_moves_and_every_byte_is_stored_after(
    database_url: str,
    live: LiveState,
    run_actor: StartRunActor,
    pg_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    journal = open_journal(proxied_database_url(database_url, pg_proxy), node_id=NODE)
    try:
        runs = claimed_runs(database_url, journal, 3)
        flusher = OutputFlusher(journal, flush_interval_s=0)
        pumps = [pump_of(r, spooled(tmp_path, r, b"before\n"), journal, live) for r in runs]
        for pump in pumps:
            flusher.watch(run_actor()[0], pump)
        pg_proxy.cut()
        try:
            assert flusher.flush_due() is False
            assert [pump.position for pump in pumps] == [0, 0, 0]
            seen = [pump.last_output_at for pump in pumps]
            for pump in pumps:
                with pump.spool_path.open("ab") as spool:
                    spool.write(b"during\n")
            flusher.flush_due()  # backing off: nothing stored, but the growth is seen
            assert [pump.position for pump in pumps] == [0, 0, 0]
            assert all(p.last_output_at > at for p, at in zip(pumps, seen, strict=True))
        finally:
            pg_proxy.restore()

        def all_stored() -> bool:
            flusher.flush_due()  # backs off after a failure: due again within seconds
            return all(stored_output(database_url, r.id) == b"before\nduring\n" for r in runs)

        wait_until(all_stored, 15, "the output stored once PostgreSQL is back")
    finally:
        journal.close()
