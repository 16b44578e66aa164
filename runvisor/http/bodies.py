"""Reading a request body into a validated model: the JSON decoding, strict about what it
accepts (duplicate keys, NaN, lone surrogates), then the model's validation."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from runvisor.errors import BadRequest, UnsupportedMediaType
from runvisor.http.appkeys import SETTINGS
from runvisor.http.validation import shorten, validate

M = TypeVar("M", bound=BaseModel)


async def read_model(request: web.Request, model: type[M], *, required: bool) -> M | None:
    """Validate the JSON body as `model`; None when the body is empty and optional."""
    raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge (413)
    data = decode_json_body(
        raw,
        request.headers.get("Content-Type"),
        required=required,
    )
    if data is None:
        return None
    context = {"max_code_bytes": request.app[SETTINGS].max_code_bytes}
    return validate(model, data, context=context)


class _Invalid(ValueError):
    """A JSON problem found by a parser hook."""


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Invalid(f"number {text[:40]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "code" keys would mean different things to different parsers: refuse to guess.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Invalid(f"duplicate key {shorten(key)!r}")
        out[key] = value
    return out


def _check_unicode(value: Any) -> None:
    # json.loads turns "\ud800" into a lone surrogate, which no database or encoder accepts.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _Invalid("a string contains an unpaired \\u surrogate escape") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def is_json_media_type(content_type: str | None) -> bool:
    """application/json or any type/subtype+json, parameters (charset) ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    if media == "application/json":
        return True
    return bool(kind) and subtype.endswith("+json") and len(subtype) > len("+json")


def decode_json_body(
    raw: bytes, content_type: str | None, *, required: bool, check_media_type: bool = True
) -> dict[str, Any] | None:
    """Decode a request body into a JSON object; None when it is empty and not required.

    `check_media_type=False` skips the Content-Type check (the legacy routes' original
    ignored it). Raises BadRequest or UnsupportedMediaType.
    """
    if not raw.strip():
        if required:
            raise BadRequest("a JSON request body is required", code="missing_body")
        return None
    if check_media_type and not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {shorten(content_type or 'none')!r}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"not UTF-8 at byte {exc.start}"
        raise BadRequest(f"invalid JSON: {where}", code="invalid_json") from None
    text = text.removeprefix("\ufeff")  # RFC 8259 lets a parser ignore a byte order mark
    try:
        data = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
        _check_unicode(data)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})",
            code="invalid_json",
        ) from None
    except ValueError as exc:  # our hooks, and int() over the digit limit
        raise BadRequest(f"invalid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(
            f"the body must be a JSON object, not {_json_kind(data)}", code="not_an_object"
        )
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"
