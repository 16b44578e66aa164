"""History as the HTTP side sees it: commands, runs and output in PostgreSQL (async pool)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from runvisor.errors import Conflict, NotFound, StoreUnavailable, Unprocessable
from runvisor.models import (
    ACTIVE_STATUSES,
    Attempt,
    AuditEntry,
    Command,
    CommandSpec,
    Run,
    RunSpec,
    RunStatus,
)
from runvisor.store.columns import (
    ATTEMPTS_OF_RUNS,
    AUDIT_COLUMNS,
    AUDIT_INSERT,
    COMMAND_COLUMNS,
    RUN_COLUMNS,
    RUNS_SELECT,
    attach_attempts,
)
from runvisor.store.connection import CONNECTION_OPTIONS

_ACTIVE = [str(s) for s in ACTIVE_STATUSES]
# Output is read a piece at a time (part of one chunk of up to 256 KiB): what a reader holds
# while a client takes it.
OUTPUT_PIECE_BYTES = 64 * 1024
# Pieces fetched at once per node, by all readers together.
OUTPUT_READS_AT_ONCE = 4
MAX_BYTE_OFFSET = 2**63 - 1  # PostgreSQL bigint


@asynccontextmanager
async def open_history(
    conninfo: str, *, default_max_output_bytes: int, max_size: int = 10
) -> AsyncIterator[History]:
    pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs=CONNECTION_OPTIONS,
        timeout=5.0,
        # A connection broken by an outage is found and replaced at checkout, not used.
        check=AsyncConnectionPool.check_connection,
    )
    # Do not wait for a first connection: the service starts (and /readyz says why) while
    # PostgreSQL is down, and the pool reconnects by itself when it returns.
    await pool.open(wait=False)
    try:
        yield History(pool, default_max_output_bytes=default_max_output_bytes)
    finally:
        await pool.close()


class History:
    def __init__(self, pool: AsyncConnectionPool, *, default_max_output_bytes: int) -> None:
        self._pool = pool
        self._default_max_output_bytes = default_max_output_bytes
        self._output_reads = asyncio.Semaphore(OUTPUT_READS_AT_ONCE)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.execute("SELECT 1")

    # Commands

    async def create_command(self, spec: CommandSpec, *, actor: str) -> Command:
        query = sql.SQL(
            "INSERT INTO commands (name, code, description, timeout_s, stuck_after_s, restart,"
            " max_output_bytes, env, limits, created_by)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {}"
        ).format(COMMAND_COLUMNS)
        max_output = spec.max_output_bytes or self._default_max_output_bytes
        async with self._conn() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(Command))
            await cur.execute(
                query,
                (
                    spec.name,
                    spec.code,
                    spec.description,
                    spec.timeout_s,
                    spec.stuck_after_s,
                    Jsonb(spec.restart.to_json()),
                    max_output,
                    Jsonb(spec.env),
                    Jsonb(spec.limits),
                    actor,
                ),
            )
            command = await cur.fetchone()
            assert command is not None
            await _audit(conn, actor, "command.create", command_id=command.id)
        return command

    async def get_command(self, command_id: int, *, include_deleted: bool = False) -> Command:
        async with self._conn() as conn:
            command = await _fetch_command(conn, command_id, include_deleted=include_deleted)
        if command is None:
            raise NotFound(f"command {command_id} not found")
        return command

    async def list_commands(self, *, limit: int, offset: int) -> tuple[list[Command], int]:
        query = sql.SQL(
            "SELECT {} FROM commands WHERE deleted_at IS NULL ORDER BY created_at, id"
            " LIMIT %s OFFSET %s"
        ).format(COMMAND_COLUMNS)
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(Command))
            await cur.execute(query, (limit, offset))
            items = await cur.fetchall()
            total = await _scalar(conn, "SELECT count(*) FROM commands WHERE deleted_at IS NULL")
        return items, total

    async def delete_command(self, command_id: int, *, actor: str) -> None:
        async with self._conn() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "SELECT id FROM commands WHERE id = %s AND deleted_at IS NULL FOR UPDATE",
                    (command_id,),
                )
            ).fetchone()
            if row is None:
                raise NotFound(f"command {command_id} not found")
            active = await _scalar(
                conn,
                "SELECT count(*) FROM runs WHERE command_id = %s AND status = ANY(%s)",
                (command_id, _ACTIVE),
            )
            if active:
                raise Conflict(
                    f"command {command_id} has {active} active run(s); stop them first",
                    code="command_busy",
                )
            await conn.execute(
                "UPDATE commands SET deleted_at = now() WHERE id = %s", (command_id,)
            )
            await _audit(conn, actor, "command.delete", command_id=command_id)

    # Runs

    async def create_run(self, command_id: int, spec: RunSpec, *, actor: str) -> Run:
        """Insert a queued run with the command's settings, overridden by `spec`.

        The run may set only the variables its command declares (Unprocessable otherwise); its
        env is the command's defaults overridden by `spec.env`.
        """
        async with self._conn() as conn, conn.transaction():
            command = await _fetch_command(conn, command_id, lock=True)
            if command is None:
                raise NotFound(f"command {command_id} not found")
            undeclared = sorted(name for name in spec.env if name not in command.env)
            if undeclared:
                raise _undeclared_env(command.id, undeclared)
            env = {name: value for name, value in command.env.items() if value is not None}
            env.update(spec.env)
            restart = spec.restart.to_json() if spec.restart is not None else command.restart
            query = sql.SQL(
                "INSERT INTO runs (command_id, code, env, timeout_s, stuck_after_s, restart,"
                " max_output_bytes, limits, created_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {}"
            ).format(RUN_COLUMNS)
            cur = conn.cursor(row_factory=class_row(Run))
            await cur.execute(
                query,
                (
                    command.id,
                    command.code,
                    Jsonb(env),
                    spec.timeout_s if spec.timeout_s is not None else command.timeout_s,
                    spec.stuck_after_s if spec.stuck_after_s is not None else command.stuck_after_s,
                    Jsonb(restart),
                    command.max_output_bytes,
                    Jsonb(command.limits),
                    actor,
                ),
            )
            run = await cur.fetchone()
            assert run is not None
            await _audit(conn, actor, "run.create", command_id=command.id, run_id=run.id)
        return run

    async def get_run(self, run_id: int) -> Run:
        async with self._conn() as conn:
            runs = await _fetch_runs(conn, sql.SQL("WHERE id = %s"), (run_id,))
        if not runs:
            raise NotFound(f"run {run_id} not found")
        return runs[0]

    async def latest_run(self, command_id: int) -> Run | None:
        async with self._conn() as conn:
            runs = await _fetch_runs(
                conn, sql.SQL("WHERE command_id = %s ORDER BY id DESC LIMIT 1"), (command_id,)
            )
        return runs[0] if runs else None

    async def list_runs(
        self,
        *,
        command_id: int | None,
        statuses: Sequence[RunStatus] | None,
        limit: int,
        offset: int,
    ) -> tuple[list[Run], int]:
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        if command_id is not None:
            conditions.append(sql.SQL("command_id = %s"))
            params.append(command_id)
        if statuses is not None:
            conditions.append(sql.SQL("status = ANY(%s)"))
            params.append([str(s) for s in statuses])
        where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        async with self._conn() as conn:
            items = await _fetch_runs(
                conn,
                where + sql.SQL(" ORDER BY id DESC LIMIT %s OFFSET %s"),
                (*params, limit, offset),
            )
            total = await _scalar(conn, sql.SQL("SELECT count(*) FROM runs ") + where, params)
        return items, total

    async def read_output(self, run_id: int, *, offset: int, limit: int) -> bytes:
        """The run's output bytes from `offset`, at most `limit` of them, in memory.

        `limit` is required: a run may have stored gigabytes (iter_output streams them).
        """
        async with self._conn() as conn:
            exists = await _scalar(conn, "SELECT count(*) FROM runs WHERE id = %s", (run_id,))
        if not exists:
            raise NotFound(f"run {run_id} not found")
        end = offset + limit
        return b"".join([piece async for piece in self.iter_output(run_id, offset=offset, end=end)])

    async def iter_output(
        self, run_id: int, *, offset: int, end: int | None
    ) -> AsyncIterator[bytes]:
        """The run's output in [offset, end), OUTPUT_PIECE_BYTES at a time.

        A reader holds one piece while it writes it, and no connection: each fetch takes a
        connection of its own, and fetches run OUTPUT_READS_AT_ONCE at a time per node, so
        readers cannot multiply the memory they take. The consumer must drop each piece before
        asking for the next.
        """
        async with self._conn() as conn:
            # Start at the chunk holding `offset`: an index scan on (run_id, byte_offset).
            chunk_at = await _scalar(
                conn,
                "SELECT coalesce(max(byte_offset), 0) FROM run_output"
                " WHERE run_id = %s AND byte_offset <= %s",
                (run_id, offset),
            )
        # Chunks that begin at or past `end` are not fetched at all.
        below = MAX_BYTE_OFFSET if end is None else min(end, MAX_BYTE_OFFSET)
        at = offset  # the next byte to yield
        while end is None or at < end:
            size = OUTPUT_PIECE_BYTES if end is None else min(OUTPUT_PIECE_BYTES, end - at)
            # Binary: bytea comes as its bytes, not as hex text twice their size. Only the piece
            # leaves PostgreSQL (substring of a chunk), and closing the cursor frees libpq's
            # copy of it before it is written.
            async with (
                self._output_reads,
                self._conn() as conn,
                conn.cursor(binary=True) as cur,
            ):
                await cur.execute(
                    "SELECT byte_offset, octet_length(data), substring(data"
                    " FROM least(greatest(%s - byte_offset, 0), octet_length(data))::int + 1"
                    " FOR %s)"
                    " FROM run_output"
                    " WHERE run_id = %s AND byte_offset >= %s AND byte_offset < %s"
                    " ORDER BY byte_offset LIMIT 1",
                    (at, size, run_id, chunk_at, below),
                )
                row = await cur.fetchone()
            if row is None:
                return
            chunk_offset, chunk_size, piece = row
            del row
            start = max(at, chunk_offset)
            if end is not None and start + len(piece) > end:
                piece = piece[: end - start]  # only past a gap between chunks
            at = start + len(piece)
            # On to the next chunk once this one is read to its end.
            chunk_end = chunk_offset + chunk_size
            chunk_at = chunk_end if at >= chunk_end else chunk_offset
            if piece:
                yield piece
            del piece  # not held while the next piece is fetched

    # Audit

    async def list_audit(
        self,
        *,
        action: str | None,
        actor: str | None,
        role: str | None,
        command_id: int | None,
        run_id: int | None,
        limit: int,
        offset: int,
    ) -> tuple[list[AuditEntry], int]:
        """Audit rows, newest first; `role` is the part of the actor before ':' (admin, node)."""
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        for condition, value in (
            (sql.SQL("action = %s"), action),
            (sql.SQL("actor = %s"), actor),
            (sql.SQL("split_part(actor, ':', 1) = %s"), role),  # audit_role_idx
            (sql.SQL("command_id = %s"), command_id),
            (sql.SQL("run_id = %s"), run_id),
        ):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        query = sql.SQL("SELECT {} FROM audit {} ORDER BY id DESC LIMIT %s OFFSET %s").format(
            AUDIT_COLUMNS, where
        )
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(AuditEntry))
            await cur.execute(query, (*params, limit, offset))
            items = await cur.fetchall()
            total = await _scalar(conn, sql.SQL("SELECT count(*) FROM audit ") + where, params)
        return items, total

    async def stop_queued_run(self, run_id: int, *, actor: str) -> Run | None:
        """End a run that has not started yet; None when it is no longer queued."""
        query = sql.SQL(
            "UPDATE runs SET status = 'stopped', finished_at = now(), stop_requested_by = %s,"
            " stop_requested_at = now(), reason = 'stopped before it started'"
            " WHERE id = %s AND status = 'queued' RETURNING id"
        )
        async with self._conn() as conn, conn.transaction():
            row = await (await conn.execute(query, (actor, run_id))).fetchone()
            if row is None:
                return None
            await _audit(conn, actor, "run.stop", run_id=run_id, detail={"was": "queued"})
        return await self.get_run(run_id)

    async def record_stop_request(self, run_id: int, *, actor: str, grace_s: float) -> Run | None:
        """Note who asked to stop an active run (the first asker is kept); None if it ended."""
        query = sql.SQL(
            "UPDATE runs SET stop_requested_by = coalesce(stop_requested_by, %s),"
            " stop_requested_at = coalesce(stop_requested_at, now()), stop_grace_s = %s"
            " WHERE id = %s AND status = ANY(%s) RETURNING id"
        )
        async with self._conn() as conn, conn.transaction():
            row = await (await conn.execute(query, (actor, grace_s, run_id, _ACTIVE))).fetchone()
            if row is None:
                return None
            await _audit(conn, actor, "run.stop", run_id=run_id, detail={"grace_s": grace_s})
        return await self.get_run(run_id)


async def _fetch_command(
    conn: psycopg.AsyncConnection[Any],
    command_id: int,
    *,
    lock: bool = False,
    include_deleted: bool = False,
) -> Command | None:
    query = sql.SQL("SELECT {} FROM commands WHERE id = %s{}{}").format(
        COMMAND_COLUMNS,
        sql.SQL("") if include_deleted else sql.SQL(" AND deleted_at IS NULL"),
        sql.SQL(" FOR SHARE") if lock else sql.SQL(""),
    )
    cur = conn.cursor(row_factory=class_row(Command))
    await cur.execute(query, (command_id,))
    return await cur.fetchone()


async def _fetch_runs(
    conn: psycopg.AsyncConnection[Any], tail: sql.Composable, params: tuple[Any, ...] | list[Any]
) -> list[Run]:
    cur = conn.cursor(row_factory=class_row(Run))
    await cur.execute(RUNS_SELECT + tail, params)
    runs = await cur.fetchall()
    if not runs:
        return runs
    acur = conn.cursor(row_factory=class_row(Attempt))
    await acur.execute(ATTEMPTS_OF_RUNS, ([r.id for r in runs],))
    return attach_attempts(runs, await acur.fetchall())


async def _scalar(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None


async def _audit(
    conn: psycopg.AsyncConnection[Any],
    actor: str,
    action: str,
    *,
    command_id: int | None = None,
    run_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(AUDIT_INSERT, (actor, action, command_id, run_id, Jsonb(detail or {})))


def _undeclared_env(command_id: int, names: list[str]) -> Unprocessable:
    """The 422 for variables the command does not declare, shaped as schemas.validate's."""
    message = f"not declared by command {command_id}; a run may set only the variables its"
    message += " command declares"
    details = [
        {"field": f"env.{name}", "message": message, "type": "not_declared"} for name in names
    ]
    shown = "; ".join(f"{d['field']}: {d['message']}" for d in details[:20])
    if len(details) > 20:
        shown += f"; and {len(details) - 20} more"
    problem = Unprocessable(shown)
    problem.details = details  # type: ignore[attr-defined]  # read by the error middleware
    return problem


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
