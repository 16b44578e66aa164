"""The JSON bodies of the original assignment's routes, as response models (see responses.py).

The original knew a Command and a Run only; fields it left out when empty (Go's omitempty) are
left out here too, never sent as null.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from runvisor import models
from runvisor.http.responses import LeftOut, ResponseModel, Timestamp, left_out_when_none
from runvisor.models import RunStatus

LegacyStatus = Literal["RUNNING", "COMPLETED", "STOPPED"]


def legacy_status(status: RunStatus | str) -> LegacyStatus:
    """The original knew only RUNNING, COMPLETED and STOPPED; exit_code tells success apart."""
    status = RunStatus(status)
    if status == RunStatus.STOPPED:
        return "STOPPED"
    return "COMPLETED" if status.is_terminal else "RUNNING"


# The first line of a legacy `result` that holds only the tail of a run's output.
LEGACY_RESULT_MARKER = (
    "[runvisor: first {skipped} bytes not shown; GET /api/v1/runs/{run_id}/output has the whole"
    " output]\n"
)
_TAIL_TEXT = (
    "at most RUNVISOR_LEGACY_RESULT_BYTES of it, its end; when bytes before that are left out,"
    " the first line says how many: " + repr(LEGACY_RESULT_MARKER.format(skipped="N", run_id="ID"))
)


def character_start(data: bytes) -> int:
    """How many bytes to drop from the front of a cut so that UTF-8 text starts at a character:
    the continuation bytes (0b10xxxxxx) of a character cut in two, at most 3."""
    n = 0
    while n < min(len(data), 3) and data[n] & 0xC0 == 0x80:
        n += 1
    return n


def legacy_result(output: bytes | None, *, skipped: int, run_id: int) -> str:
    """`result`: the output as text; when it is a tail, `skipped` bytes before it are named."""
    # Output is arbitrary bytes; the legacy shape has only a string for it.
    text = (output or b"").decode("utf-8", errors="replace")
    if skipped:
        return LEGACY_RESULT_MARKER.format(skipped=skipped, run_id=run_id) + text
    return text


class LegacyCommand(ResponseModel):
    """The original's Command; GET /command/{id} adds its latest run's id, status and output."""

    id: int
    code: str
    description: str
    created_at: Timestamp
    last_run_id: int | LeftOut = left_out_when_none()
    last_run_status: LegacyStatus | LeftOut = left_out_when_none()
    result: str | LeftOut = left_out_when_none(f"the latest run's output; {_TAIL_TEXT}")

    @classmethod
    def of(
        cls,
        c: models.Command,
        *,
        latest_run: models.Run | None = None,
        latest_output: bytes | None = None,
        latest_skipped: int = 0,
    ) -> LegacyCommand:
        """With `latest_run`, also that run's id, status and output (`latest_output`, the tail
        after `latest_skipped` bytes)."""
        if latest_run is None:
            return cls(id=c.id, code=c.code, description=c.description, created_at=c.created_at)
        return cls(
            id=c.id,
            code=c.code,
            description=c.description,
            created_at=c.created_at,
            last_run_id=latest_run.id,
            last_run_status=legacy_status(latest_run.status),
            result=legacy_result(latest_output, skipped=latest_skipped, run_id=latest_run.id),
        )


class LegacyRun(ResponseModel):
    """The original's Run."""

    id: int
    command: LegacyCommand
    completed_at: Annotated[Timestamp, Field(description="the start time until the run ends")]
    result: str | LeftOut = left_out_when_none(
        f"the output so far; left out when empty; {_TAIL_TEXT}"
    )
    status: LegacyStatus
    exit_code: int | None

    @classmethod
    def of(
        cls, r: models.Run, c: models.Command, output: bytes | None, *, skipped: int = 0
    ) -> LegacyRun:
        """`completed_at` holds the start time until the run ends, as in the original.
        `output` is the run's output after its first `skipped` bytes."""
        text = legacy_result(output, skipped=skipped, run_id=r.id)
        return cls(
            id=r.id,
            command=LegacyCommand.of(c),
            completed_at=r.finished_at or r.started_at or r.created_at,
            result=text or None,  # the original leaves `result` out when empty (omitempty)
            status=legacy_status(r.status),
            exit_code=r.exit_code,
        )
