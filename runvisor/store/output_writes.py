"""The output write a RunActor (or the Supervisor's closer) hands the group-commit writer:
chunks of many runs in one transaction, fenced like the other journal writes (journal_writes),
with the head-and-tail output limit applied under the run's row lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg

from runvisor.models import output_head_tail
from runvisor.store.journal_writes import EndAttempt


class OutputBatch(NamedTuple):
    """One attempt's output to store from byte `offset` (RunJournal.append_outputs)."""

    run_id: int
    attempt: int
    offset: int
    chunks: Sequence[bytes]
    max_output_bytes: int


@dataclass(frozen=True, slots=True)
class AppendOutput:
    """Output chunks of one attempt from byte `offset`; answers how many bytes were stored anew,
    or None if the node lost the run.

    Two writers may store the same spool range (a RunActor woken after the Supervisor took over
    its attempt's end): under the row lock, bytes below the stored end are skipped, so no byte
    is stored twice, and `output_bytes` never moves backwards.

    The head-and-tail limit: past `max_output_bytes`, the run keeps its first `head` bytes and
    its last `tail` (models.output_head_tail); the gap between is recorded on the run
    (output_gap_start, output_gap_end) and its chunks deleted in the same transaction. A write
    may begin past the stored end (the pump skipped bytes that could only fall in the gap):
    those bytes join the gap.
    """

    node: str
    run_id: int
    attempt: int
    offset: int
    chunks: Sequence[bytes]
    max_output_bytes: int

    @property
    def size_bytes(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    @classmethod
    def write_all(cls, conn: psycopg.Connection[Any], writes: Sequence[AppendOutput]) -> list[Any]:
        keys = sorted({(w.run_id, w.attempt, w.node) for w in writes})
        stored: dict[tuple[int, int, str], _Stored] = {
            (run_id, attempt, node): _Stored(output_bytes, gap_start, gap_end)
            for run_id, attempt, node, output_bytes, gap_start, gap_end in conn.execute(
                "SELECT id, attempt, node, output_bytes, output_gap_start, output_gap_end"
                " FROM runs WHERE (id, attempt, node) IN"
                "   (SELECT * FROM unnest(%s::bigint[], %s::int[], %s::text[]))"
                " AND status = 'running' ORDER BY id FOR UPDATE",
                ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
            ).fetchall()
        }
        before = {key: (s.gap_start, s.gap_end) for key, s in stored.items()}
        answers: list[Any] = []
        run_ids: list[int] = []
        offsets: list[int] = []
        data: list[bytes] = []
        for write in writes:
            key = (write.run_id, write.attempt, write.node)
            state = stored.get(key)
            if state is None:
                answers.append(None)
                continue
            head, tail = output_head_tail(write.max_output_bytes)
            if write.offset > state.end:  # skipped bytes: dropped
                state.drop(min(state.end, head), write.offset)
            at, new_bytes = write.offset, 0
            for chunk in write.chunks:
                skip = min(max(state.end - at, 0), len(chunk))
                if skip < len(chunk):
                    run_ids.append(write.run_id)
                    offsets.append(at + skip)
                    data.append(chunk[skip:])
                    new_bytes += len(chunk) - skip
                at += len(chunk)
            state.end = max(state.end, at)
            keep_from = state.end - tail  # the tail: only the last `tail` bytes are kept
            if keep_from > (state.gap_end if state.gap_end is not None else head):
                state.drop(head, keep_from)
            answers.append(new_bytes)
        if stored:
            items = list(stored.items())
            conn.execute(
                "UPDATE runs SET output_bytes = GREATEST(runs.output_bytes, v.total),"
                " output_truncated = runs.output_truncated OR v.gap_start IS NOT NULL,"
                " output_gap_start = v.gap_start, output_gap_end = v.gap_end"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])"
                "   AS v(id, total, gap_start, gap_end)"
                " WHERE runs.id = v.id",
                (
                    [key[0] for key, _ in items],
                    [s.end for _, s in items],
                    [s.gap_start for _, s in items],
                    [s.gap_end for _, s in items],
                ),
            )
        if data:
            _insert_chunks(conn, run_ids, offsets, data)
        moved = [(k[0], s) for k, s in stored.items() if (s.gap_start, s.gap_end) != before[k]]
        if moved:
            # Chunks wholly inside the gap go (one straddling its end holds tail bytes: kept).
            # Those of the gap before were deleted then: a batch deletes what the tail moved
            # past since, at most the tail's worth plus the batch.
            conn.execute(
                "DELETE FROM run_output o USING unnest(%s::bigint[], %s::bigint[], %s::bigint[])"
                "   AS v(id, gap_start, gap_end)"
                " WHERE o.run_id = v.id AND o.byte_offset >= v.gap_start"
                " AND o.byte_offset < v.gap_end"
                " AND o.byte_offset + octet_length(o.data) <= v.gap_end",
                (
                    [run_id for run_id, _ in moved],
                    [s.gap_start for _, s in moved],
                    [s.gap_end for _, s in moved],
                ),
            )
        return answers


@dataclass(slots=True)
class _Stored:
    """A run's stored output as a batch moves it on: its end, and the gap."""

    end: int
    gap_start: int | None
    gap_end: int | None

    def drop(self, start: int, end: int) -> None:
        """Bytes [start, end) are dropped; the gap grows to cover them (one gap per run)."""
        self.gap_start = start if self.gap_start is None else min(self.gap_start, start)
        self.gap_end = end if self.gap_end is None else max(self.gap_end, end)


# Below this many bytes in a batch, its chunks go as three arrays in one statement (unnest: the
# cheapest for many small chunks); above, as one INSERT per chunk, pipelined (psycopg's
# executemany: one round trip), with each chunk a binary parameter of its own. Measured with one
# run writing 128 MiB: a large bytea array, or one multi-row VALUES holding every chunk, stored
# 84-89 MiB/s with a higher peak RSS; the pipelined rows 115-123 MiB/s.
ARRAY_INSERT_MAX_BYTES = 1024 * 1024


def _insert_chunks(
    conn: psycopg.Connection[Any], run_ids: list[int], offsets: list[int], data: list[bytes]
) -> None:
    """All runs' chunks in one round trip. A re-flush after a crash may repeat an offset
    already stored: keep the first."""
    conflict = " ON CONFLICT (run_id, byte_offset) DO NOTHING"
    if sum(len(chunk) for chunk in data) <= ARRAY_INSERT_MAX_BYTES:
        conn.execute(
            "INSERT INTO run_output (run_id, byte_offset, data)"
            " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %b::bytea[])" + conflict,
            (run_ids, offsets, data),
        )
        return
    conn.cursor().executemany(
        "INSERT INTO run_output (run_id, byte_offset, data) VALUES (%s, %s, %b)" + conflict,
        list(zip(run_ids, offsets, data, strict=True)),
    )


@dataclass(frozen=True, slots=True)
class HeldOutput:
    """An attempt's last batch of output, read from its spool and held back to be stored with
    the attempt's end (EndWithOutput)."""

    offset: int
    chunks: Sequence[bytes]
    max_output_bytes: int


@dataclass(frozen=True, slots=True)
class EndWithOutput:
    """An attempt's last output and its end in one transaction: a short run's end costs one
    commit, not two. Answers (bytes stored anew, status stored); (None, None) if the node
    lost the run. The end is written only where the output was (the same fence)."""

    output: AppendOutput
    end: EndAttempt

    @property
    def size_bytes(self) -> int:
        return self.output.size_bytes

    @classmethod
    def write_all(cls, conn: psycopg.Connection[Any], writes: Sequence[EndWithOutput]) -> list[Any]:
        stored = AppendOutput.write_all(conn, [w.output for w in writes])
        kept = [i for i, new_bytes in enumerate(stored) if new_bytes is not None]
        statuses = EndAttempt.write_all(conn, [writes[i].end for i in kept])
        answers: list[Any] = [(None, None)] * len(writes)
        for i, status in zip(kept, statuses, strict=True):
            answers[i] = (stored[i], status)
        return answers
