"""JSON Schema helpers shared by the OpenAPI tests."""

from __future__ import annotations

from typing import Any


def closed(schema: Any) -> Any:
    """A copy in which every object schema that lists its properties allows no others."""
    if isinstance(schema, dict):
        out = {key: closed(value) for key, value in schema.items()}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [closed(value) for value in schema]
    return schema
