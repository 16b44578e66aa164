"""docs/benchmarks.md: one generated section per mode (full, quick), each replaced by the next
run of that mode; the text around them is left as it is."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from bench.machine import Machine
from bench.report import Report

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

INTRO = """# Benchmarks

The figures of issue 8's table, as `python -m bench` measured them
([bench/README.md](../bench/README.md) says what each one means). Each figure is a median over
repeats, next to its raw limit (the same work done by the machine without runvisor, measured in
the same run) and the ratio value / raw. The sections below are generated, one per mode: each
run replaces its own (a full run the full one, a `--quick` run the quick one). Write anything
else outside them.
"""


def markers(mode: str) -> tuple[str, str]:
    return f"<!-- bench:{mode}:begin -->", f"<!-- bench:{mode}:end -->"


def replace_section(text: str, mode: str, body: str) -> str:
    """`text` with the section of `mode` set to `body` (appended if it has none yet)."""
    begin, end = markers(mode)
    block = f"{begin}\n{body.strip()}\n{end}"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        return text.rstrip() + "\n\n" + block + "\n"
    return text[:start] + block + text[stop + len(end) :]


def section_body(
    *,
    quick: bool,
    report: Report,
    machine: Machine,
    command_line: str,
    code: str,
    wall_s: float,
    notes: list[str] | None = None,
    when: datetime | None = None,
) -> str:
    """The section's text; `notes` are further lines for its list (stores, peer, load)."""
    when = when or datetime.now(UTC)
    title = "Quick run (`--quick`: reduced sizes)" if quick else "Full run"
    missed = report.missed()
    lines = [
        f"## {title}",
        "",
        f"Measured {when:%Y-%m-%d %H:%M} UTC in {wall_s:.0f} s with `{command_line}`, code {code}.",
        "",
        *(f"- {line}" for line in [*machine.summary(), *(notes or [])]),
        "",
        report.markdown_table(),
        "",
        ("Targets missed: " + ", ".join(missed) + ".") if missed else "Every target met.",
    ]
    if quick:
        lines += [
            "",
            "The targets are for the full sizes; a quick run's verdicts only hint at them.",
        ]
    return "\n".join(lines)


def write_section(path: Path, mode: str, body: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else INTRO
    path.write_text(replace_section(text, mode, body), encoding="utf-8")
