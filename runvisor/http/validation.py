"""Pydantic's validation errors, worded for an API user: one 422 naming every failing field.

(pure: no I/O)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from runvisor.errors import Unprocessable

M = TypeVar("M", bound=BaseModel)


class NameRefused(ValueError):
    """A variable name that matches the pattern but may never be set: reported as is."""


def shorten(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters, for quoting a client's input in an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "finite_number": "must be a finite number",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "string_too_short": "must have at least {min_length} characters",
    "string_too_long": "must have at most {max_length} characters",
    "too_long": "must have at most {max_length} entries",
    "literal_error": "must be one of {expected}",
}


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """(field path, message) for one pydantic error, worded for an API user."""
    loc = [str(part) for part in error["loc"]]
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc.pop()
    # The keys of `env` are variable names; other keys (placement labels) say what they are.
    is_key = is_key and loc[:1] == ["env"]
    path = ".".join(shorten(part) if part else '""' for part in loc) or "body"
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    elif kind == "string_pattern_mismatch" and is_key:
        message = "invalid variable name: must match [A-Za-z_][A-Za-z0-9_]*"
    elif kind == "string_pattern_mismatch":
        message = f"must match {ctx.get('pattern')}"
    elif kind in _MESSAGES:
        message = _MESSAGES[kind].format(**ctx)
    else:
        message = error["msg"]
    if (
        is_key
        and kind != "string_pattern_mismatch"
        and not isinstance(ctx.get("error"), NameRefused)
    ):
        message = f"invalid variable name: {message}"
    return path, message


def validate(model_cls: type[M], data: Mapping[str, Any], *, context: Mapping[str, Any]) -> M:
    """Validate `data` into `model_cls`; raises Unprocessable naming every failing field.

    The exception carries `.details`: [{"field", "message", "type"}], for error.details.
    """
    try:
        return model_cls.model_validate(data, context=dict(context))
    except ValidationError as exc:
        details = []
        for error in exc.errors(include_url=False, include_input=False):
            path, message = _describe(error)
            details.append({"field": path, "message": message, "type": error["type"]})
        shown = "; ".join(f"{d['field']}: {d['message']}" for d in details[:20])
        if len(details) > 20:
            shown += f"; and {len(details) - 20} more"
        problem = Unprocessable(shown or "invalid request body")
        problem.details = details  # type: ignore[attr-defined]  # read by the error middleware
        raise problem from None
