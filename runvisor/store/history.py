"""History as the HTTP side sees it: commands, runs and output in PostgreSQL (async pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from runvisor.errors import Conflict, Forbidden, NotFound, StoreUnavailable
from runvisor.models import (
    ACTIVE_STATUSES,
    AuditEntry,
    Command,
    CommandSpec,
    Run,
    RunSpec,
    RunStatus,
)
from runvisor.overrides import loosened, undeclared_env
from runvisor.store.columns import (
    AUDIT_COLUMNS,
    AUDIT_INSERT,
    COMMAND_COLUMNS,
    GET_RUN,
    RUNS_WITH_ATTEMPTS_SELECT,
    attempts_from_json,
)
from runvisor.store.command_cache import CommandCache
from runvisor.store.connection import (
    CONNECTION_OPTIONS,
    check_if_idle_async,
    note_returned_async,
)
from runvisor.store.drains import DrainRequests
from runvisor.store.nodes import NodeReads
from runvisor.store.output_reads import OutputReads, ReadPlan
from runvisor.store.run_inserts import NewRun, RunInserts
from runvisor.store.stop_requests import StopRequests

_ACTIVE = [str(s) for s in ACTIVE_STATUSES]


@asynccontextmanager
async def open_history(
    conninfo: str, *, default_max_output_bytes: int, max_size: int = 10
) -> AsyncIterator[History]:
    pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        # Autocommit: a read is one round trip (no BEGIN, no COMMIT); writes of more than one
        # statement say conn.transaction().
        kwargs={**CONNECTION_OPTIONS, "autocommit": True},
        timeout=5.0,
        # A connection broken by an outage is found and replaced at checkout, not used; one
        # used a moment ago is given out without a round trip (connection.CHECK_IDLE_AFTER_S).
        check=check_if_idle_async,
        reset=note_returned_async,
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
        self._commands = CommandCache()  # the commands create_run has read
        self.nodes = NodeReads(self._conn)  # the fleet's table (store/nodes.py)
        self.drains = DrainRequests(self._conn)  # store/drains.py
        self.output_reads = OutputReads(self._conn)  # the live streams read pieces' offsets
        self.stop_requests = StopRequests(self._conn)  # many at once in one statement
        self.run_inserts = RunInserts(self._conn)  # the same, for new runs

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
            " max_output_bytes, env, limits, place_node, place_labels, created_by, on_output_limit)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {}"
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
                    spec.place_node,
                    Jsonb(spec.place_labels),
                    actor,
                    str(spec.on_output_limit),
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
        self._commands.forget(command_id)

    # Runs

    async def create_run(self, command_id: int, spec: RunSpec, *, actor: str) -> Run:
        """Insert a queued run with the command's settings, overridden by `spec`.

        The run may set only the variables its command declares (Unprocessable otherwise); its
        env is the command's defaults overridden by `spec.env`.

        One round trip for a command read before (store/command_cache.py), else two. The one
        statement inserts the run and its audit row only while the command is there; starts
        asked at once share it (store/run_inserts.py)."""
        command = self._commands.get(command_id)
        if command is None:
            async with self._conn() as conn:
                command = await _fetch_command(conn, command_id)
        if command is None:
            raise NotFound(f"command {command_id} not found")
        self._commands.put(command)
        undeclared = sorted(name for name in spec.env if name not in command.env)
        if undeclared:
            raise undeclared_env(command.id, undeclared)
        looser = [] if spec.may_loosen else loosened(command, spec)
        if looser:
            raise Forbidden(
                f"only an admin may loosen command {command.id}'s bounds: " + "; ".join(looser)
            )
        env = {name: value for name, value in command.env.items() if value is not None}
        env.update(spec.env)
        restart = spec.restart.to_json() if spec.restart is not None else command.restart
        place_node = command.place_node if spec.place_node is None else spec.place_node
        place_labels = command.place_labels if spec.place_labels is None else spec.place_labels
        run = await self.run_inserts.insert(
            NewRun(
                command_id=command.id,
                code=command.code,
                env=env,
                timeout_s=spec.timeout_s if spec.timeout_s is not None else command.timeout_s,
                stuck_after_s=(
                    spec.stuck_after_s if spec.stuck_after_s is not None else command.stuck_after_s
                ),
                restart=restart,
                max_output_bytes=spec.max_output_bytes or command.max_output_bytes,
                limits=command.limits,
                place_node=place_node or None,  # "": the request asked for no node in particular
                place_labels=place_labels,
                created_by=actor,
                on_output_limit=str(spec.on_output_limit or command.on_output_limit),
            )
        )
        if run is None:  # deleted since it was read
            self._commands.forget(command_id)
            raise NotFound(f"command {command_id} not found")
        return run

    async def get_run(self, run_id: int) -> Run:
        # The hottest read (clients poll it): one statement, one round trip, one snapshot.
        async with self._conn() as conn:
            cur = conn.cursor(row_factory=class_row(Run))
            await cur.execute(GET_RUN, (run_id,))
            runs = attempts_from_json(await cur.fetchall())
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
        async with self._conn() as conn, _snapshot(conn):
            items = await _fetch_runs(
                conn,
                where + sql.SQL(" ORDER BY id DESC LIMIT %s OFFSET %s"),
                (*params, limit, offset),
            )
            total = await _scalar(conn, sql.SQL("SELECT count(*) FROM runs ") + where, params)
        return items, total

    def iter_output(self, run_id: int, *, offset: int, end: int | None) -> AsyncIterator[bytes]:
        """The run's output in [offset, end), streamed in batches (see OutputReads)."""
        return self.output_reads.iter(run_id, offset=offset, end=end)

    def iter_output_plan(self, run_id: int, plan: ReadPlan) -> AsyncIterator[bytes]:
        """The body of a read planned by output_reads.plan_read (the gap's marker included)."""
        return self.output_reads.iter_plan(run_id, plan)

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


@asynccontextmanager
async def _snapshot(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """A read-only transaction whose statements all see one snapshot: a page of runs and
    their total agree."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


async def _fetch_runs(
    conn: psycopg.AsyncConnection[Any], tail: sql.Composable, params: tuple[Any, ...] | list[Any]
) -> list[Run]:
    """Runs with their attempts, in one statement (so both agree)."""
    cur = conn.cursor(row_factory=class_row(Run))
    await cur.execute(RUNS_WITH_ATTEMPTS_SELECT + tail, params)
    return attempts_from_json(await cur.fetchall())


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
