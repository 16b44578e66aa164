"""The watchdog: each tick the Supervisor pings every RunActor of this node, and the watchdog
says which of them is wedged (no answer in time, and not waiting on a store) or dead (gone
without a word). The Supervisor, which owns the table of RunActors, acts on what it says."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pykka

from runvisor import protocol as m
from runvisor.actors.run_actor import RunActor
from runvisor.errors import StoreUnavailable
from runvisor.logs import get_logger
from runvisor.models import Run, RunStatus
from runvisor.store.journal import RunJournal
from runvisor.store.waits import StoreWaits

# How long a dead RunActor that had ended its attempt stays in the table: its AttemptEnded
# may still be on the way.
DEAD_GRACE_S = 5.0

log = get_logger("runvisor.supervisor")


@dataclass(slots=True)
class LiveAttempt:
    """A RunActor of this node and what the Supervisor knows of its attempt."""

    ref: pykka.ActorRef[RunActor]
    attempt: int
    marker: str
    ping: tuple[float, pykka.Future[Any]] | None = None
    dead_since: float | None = None
    logged_store_wait: float | None = None  # the store wait already logged (its start)


class Verdict(enum.Enum):
    WEDGED = "wedged"  # end the attempt as stuck; forget the RunActor once that is recorded
    FAILED = "failed"  # died with its attempt running: forget it, end the attempt as failed
    GONE = "gone"  # died after ending its attempt, or stood down: forget it


@dataclass(frozen=True, slots=True)
class Finding:
    run_id: int
    entry: LiveAttempt
    verdict: Verdict
    run: Run | None = None  # FAILED: the run as read, for the closer


class Watchdog:
    def __init__(
        self, *, journal: RunJournal, store_waits: StoreWaits, ping_timeout_s: float
    ) -> None:
        self.journal = journal
        self.store_waits = store_waits
        self.ping_timeout_s = ping_timeout_s
        # A ping per RunActor every quarter of the timeout, not at every tick: a thousand
        # RunActors woken each second cost a tenth of a core. A wedge is seen in 1.25 times it.
        self.ping_every_s = ping_timeout_s / 4
        self.node_id = journal.node_id

    def check(self, live: Mapping[int, LiveAttempt]) -> list[Finding]:
        """Collect the answers to the last pings, send new ones; what needs the Supervisor."""
        now = time.monotonic()
        findings: list[Finding] = []
        for run_id, entry in list(live.items()):
            if entry.ping is not None:
                sent_at, future = entry.ping
                try:
                    future.get(timeout=0)
                    if now - sent_at < self.ping_every_s:
                        continue  # answered: the next ping when it is due
                except pykka.Timeout:
                    if self._is_wedged(run_id, entry, sent_at, now):
                        log.error(
                            "run actor does not answer; treating the attempt as stuck",
                            run_id=run_id,
                            attempt=entry.attempt,
                        )
                        findings.append(Finding(run_id, entry, Verdict.WEDGED))
                    continue
                except pykka.ActorDeadError:
                    findings.extend(self._dead(run_id, entry))
                    continue
            try:
                entry.ping = (now, entry.ref.ask(m.Ping(), block=False))
            except pykka.ActorDeadError:
                findings.extend(self._dead(run_id, entry))
        return findings

    def _is_wedged(self, run_id: int, entry: LiveAttempt, sent_at: float, now: float) -> bool:
        """Whether a ping still unanswered means its RunActor is wedged.

        A RunActor blocked in a PostgreSQL or Redis call (a locked row, a paused server, an
        exhausted pool) is slow, not wedged: it answers once the store does, and its run must
        not be killed for that, however long it takes. So only time spent outside store calls
        counts: the ping's clock starts again whenever the actor leaves one (the journal and
        the live state mark every call in `store_waits`). The waiting stays on the actor
        rather than moving to another thread: its writes stay in order with its exits and
        stops, and a store outage needs no queue of pending writes.
        """
        timeout = self.ping_timeout_s
        wait = self.store_waits.of(entry.ref.actor_urn)
        if wait.waiting_since is not None:
            if now - wait.waiting_since > timeout and entry.logged_store_wait != wait.waiting_since:
                entry.logged_store_wait = wait.waiting_since
                log.warning(
                    "run actor waits on the store; not treated as stuck",
                    run_id=run_id,
                    attempt=entry.attempt,
                    waited_s=round(now - wait.waiting_since, 1),
                )
            return False
        late_since = max(sent_at, wait.left_at or sent_at)
        return now - late_since > timeout

    def _dead(self, run_id: int, entry: LiveAttempt) -> list[Finding]:
        """A RunActor gone without a word (its AttemptEnded or RunActorFailed may yet come)."""
        try:
            run = self.journal.get_run(run_id)
        except StoreUnavailable:
            return []
        ours = run is not None and run.attempt == entry.attempt and run.node == self.node_id
        if ours and run is not None and run.status is RunStatus.RUNNING:
            # Died without ending its attempt (e.g. in on_start): end it as a failed actor.
            return [Finding(run_id, entry, Verdict.FAILED, run)]
        # It ended its attempt (its AttemptEnded may still be on the way, so wait a little
        # before dropping it), or it stood down because another node has the run now.
        now = time.monotonic()
        if entry.dead_since is None:
            entry.dead_since = now
        elif now - entry.dead_since > DEAD_GRACE_S:
            return [Finding(run_id, entry, Verdict.GONE)]
        return []
