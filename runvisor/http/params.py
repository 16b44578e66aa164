"""Query and path parameters: ids, pages, filters and byte ranges (pure: no I/O).

Each is parsed by hand (aiohttp gives strings) and a bad one is a 400 naming the parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from runvisor.errors import BadRequest, NotFound
from runvisor.http.auth import Role
from runvisor.http.request_models import CONTROL_CHARACTERS
from runvisor.http.validation import shorten
from runvisor.models import ACTIVE_STATUSES, TERMINAL_STATUSES, RunStatus

MAX_ID = 2**63 - 1  # PostgreSQL bigint
DEFAULT_PAGE_LIMIT = 50  # v1 lists without ?limit=
LEGACY_PAGE_LIMIT = 10  # the original's default for GET /commands
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would accept "²" and "٣"


def _int_within(raw: str, minimum: int, maximum: int) -> int | None:
    """`raw` as an int if it is ASCII digits within bounds, else None."""
    # Leading zeros go first, then the length check: int() refuses over 4300 digits (and is
    # slow on a long string before it does), so "000…01" must reach it as "1".
    digits = raw.lstrip("0") or "0"
    if not _DIGITS.fullmatch(raw) or len(digits) > 19:
        return None
    value = int(digits)
    return value if minimum <= value <= maximum else None


def parse_int_param(
    query: Mapping[str, str], name: str, *, default: int | None, minimum: int, maximum: int = MAX_ID
) -> int | None:
    """An integer query parameter: ASCII digits only, within bounds; absent or empty -> default."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    value = _int_within(raw, minimum, maximum)
    if value is None:
        raise BadRequest(
            f"{name}: must be an integer from {minimum} to {maximum}", code="invalid_parameter"
        )
    return value


def parse_pagination(
    query: Mapping[str, str], *, default_limit: int, max_limit: int
) -> tuple[int, int]:
    """(limit, offset) from ?limit=&offset= ; offset counts rows, not pages."""
    limit = parse_int_param(
        query, "limit", default=min(default_limit, max_limit), minimum=1, maximum=max_limit
    )
    offset = parse_int_param(query, "offset", default=0, minimum=0)
    assert limit is not None and offset is not None
    return limit, offset


def parse_id(raw: str, what: str) -> int:
    """A path id. Not digits -> BadRequest; 0 or beyond bigint -> NotFound (it cannot exist)."""
    if not _DIGITS.fullmatch(raw):
        raise BadRequest(
            f"{what} id must be a positive integer, not {shorten(raw)!r}", code="invalid_id"
        )
    value = _int_within(raw, 1, MAX_ID)
    if value is None:
        raise NotFound(f"{what} {shorten(raw)} not found")
    return value


_STATUS_ALIASES = {"active": ACTIVE_STATUSES, "terminal": TERMINAL_STATUSES}


def parse_status_filter(query: Mapping[str, str]) -> tuple[RunStatus, ...] | None:
    """?status=running,queued (or `active`, `terminal`) -> statuses in enum order; None = all."""
    raw = query.get("status")
    if raw is None or not raw.strip():
        return None
    chosen: set[RunStatus] = set()
    for part in raw.split(","):
        word = part.strip().lower()
        if word in _STATUS_ALIASES:
            chosen |= _STATUS_ALIASES[word]
        elif word in RunStatus.__members__.values():
            chosen.add(RunStatus(word))
        else:
            allowed = ", ".join([*RunStatus, *_STATUS_ALIASES])
            raise BadRequest(
                f"status: {shorten(part.strip())!r} is not one of {allowed}",
                code="invalid_parameter",
            )
    return tuple(s for s in RunStatus if s in chosen)


MAX_FILTER_CHARS = 200  # the longest text filter (?action=, ?actor=)
AUDIT_ROLES = (*(r.label for r in Role), "node")  # ?role= of GET /api/v1/audit


def parse_text_param(query: Mapping[str, str], name: str) -> str | None:
    """A text filter, matched exactly: at most MAX_FILTER_CHARS, no control characters (a NUL
    cannot even reach PostgreSQL), valid Unicode; absent or empty -> None."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_FILTER_CHARS or CONTROL_CHARACTERS.search(raw) or not _encodable(raw):
        raise BadRequest(
            f"{name}: must be at most {MAX_FILTER_CHARS} characters, none of them a control"
            " character",
            code="invalid_parameter",
        )
    return raw


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def parse_choice_param(query: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    """One of `choices` (letter case ignored); absent or empty -> None."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    value = raw.strip().lower()
    if value not in choices:
        raise BadRequest(
            f"{name}: {shorten(raw)!r} is not one of {', '.join(choices)}",
            code="invalid_parameter",
        )
    return value


def parse_output_range(query: Mapping[str, str]) -> tuple[int, int | None]:
    """(offset, limit) in bytes for GET .../output; limit None = to the end."""
    offset = parse_int_param(query, "offset", default=0, minimum=0)
    limit = parse_int_param(query, "limit", default=None, minimum=1)
    assert offset is not None
    return offset, limit


def parse_flag(query: Mapping[str, str], name: str) -> bool:
    """?name=1 / true / yes -> True; absent, empty, 0 / false / no -> False; else 400."""
    raw = query.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name}: must be 1 or 0 (true or false)", code="invalid_parameter")
