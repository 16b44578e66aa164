"""What the client prints: aligned tables and `key: value` lists for people, the server's JSON
for scripts (--json)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

Column = tuple[str, Callable[[Mapping[str, Any]], Any]]  # header, value of a row


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, indent: str = ""
) -> None:
    """A header line, then one line per row, columns padded to their widest cell. No rows: the
    header alone, so a person sees the list is empty rather than nothing."""
    cells = [[header for header, _ in columns]]
    cells += [[cell_text(value(row)) for _, value in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        padded = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo((indent + "  ".join(padded)).rstrip())


def print_fields(item: Mapping[str, Any], names: Sequence[str] | None = None) -> None:
    """`name: value` lines, names aligned; nested objects as compact JSON."""
    keys = list(names) if names is not None else list(item)
    width = max((len(k) for k in keys), default=0)
    for key in keys:
        if key in item:
            click.echo(f"{key + ':':<{width + 1}} {cell_text(item[key], limit=None)}".rstrip())


def cell_text(value: Any, *, limit: int | None = 50) -> str:
    """A value as one line: `-` for none, compact JSON for lists and objects, control
    characters (a command's newlines) shown escaped, long text cut with `…`."""
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":")) if value else "-"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def when(value: Any) -> str:
    """An API time (`2026-12-03T08:15:56.728913Z`) to the second: `2026-12-03 08:15:56`."""
    if not isinstance(value, str):
        return "-"
    return value.replace("T", " ")[:19]


def labels_text(value: Any) -> str:
    if isinstance(value, dict) and value:
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return "-"


def page_note(page: dict[str, Any]) -> None:
    """Say on stderr when the table is one page of more (stdout stays the table)."""
    shown, total = len(page.get("items", [])), page.get("total")
    if isinstance(total, int) and shown < total:
        offset = page.get("offset", 0)
        click.echo(
            f"({shown} of {total} shown, from offset {offset}; --limit and --offset page)",
            err=True,
        )
