"""Reading a request body into a validated model."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel

from runvisor.http.appkeys import SETTINGS
from runvisor.http.schemas import decode_json_body, validate

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
