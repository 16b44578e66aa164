"""The benchmark's own machinery (bench/): the verdicts on given figures, the tables, the
generated section of docs/benchmarks.md, and small real benchmarks against a test node."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path

import psycopg
import pytest

from bench import b2_light_load, b3_big_output, b5_stop
from bench.context import QUICK, Context
from bench.docs_section import INTRO, markers, replace_section, section_body
from bench.machine import Machine
from bench.node import NodeUnderTest, is_pool_trouble
from bench.profiler import top_frames
from bench.report import PEER_B1, Figure, Report, verdict
from bench.stores import autovacuum_stand_in
from tests.fix_service import Service
from tests.polling import wait_until

MACHINE = Machine("Test CPU", 2, 2, 23.5, "6.1", "CPython 3.11.7", "16.2", "Redis 7.0.15", "none")


def judged(*figures: Figure) -> list[str]:
    keyed = {f.key: f for f in figures}
    return [verdict(f, keyed) for f in figures]


def test_the_ratio_is_value_over_raw_and_absent_without_a_raw() -> None:
    assert Figure("B1 short runs/s", "runs/s", 300, 1000).ratio == pytest.approx(0.3)
    assert Figure("B4 RSS", "MiB", 80).ratio is None
    assert Figure("B2 202 answer p50", "ms", 1, 0).ratio is None


@pytest.mark.parametrize(
    ("figure", "expected"),
    [
        (Figure("B1 short runs/s", "runs/s", 350, 1000), "yes (no peer measured)"),
        (Figure("B1 short runs/s", "runs/s", 250, 1000), "NO"),
        (Figure("B2 202 answer p50", "ms", 1.5, 1.4), "yes"),
        (Figure("B2 202 answer p50", "ms", 0.9, 1.4), "yes (stretch)"),
        (Figure("B2 202 answer p50", "ms", 2.1, 1.4), "NO"),
        (Figure("B3 output stored", "MiB/s", 160, 900), "yes"),
        (Figure("B3 output stored", "MiB/s", 140, 900), "NO"),
        (Figure("B4 lines stored", "lines", 1999, 2000), "NO"),
        (Figure("B4 lines stored", "lines", 2000, 2000), "yes"),
        (Figure("B4b all terminal", "s", 2.4, 2.0), "yes"),
        (Figure("B4b all terminal", "s", 1.1, 1.0), "yes (stretch)"),
        (Figure("B4b all terminal", "s", 2.6, 2.0), "NO"),
        (Figure("B5 survivors", "", 1), "NO"),
        (Figure("B7 pool warnings", "", 0), "yes"),
        (Figure("B5 stop → stopped p99", "ms", math.nan, 3.0), "NO (not measured)"),
        (Figure("something else", "ms", 5.0, 1.0), "-"),
    ],
)
def test_a_figure_is_judged_by_its_target(figure: Figure, expected: str) -> None:
    assert judged(figure) == [expected]


def test_b1_must_also_beat_the_peer_in_the_same_run() -> None:
    celery = Figure(PEER_B1, "runs/s", 400, 1000)
    assert judged(Figure("B1 short runs/s", "runs/s", 350, 1000), celery)[0] == (
        "NO (below the peer)"
    )
    assert judged(Figure("B1 short runs/s", "runs/s", 600, 1000), celery) == ["yes (stretch)", "-"]


def sample_report() -> Report:
    report = Report()
    report.add(
        [
            Figure("B1 short runs/s", "runs/s", 45.2, 1111, 3),
            Figure("B2 202 answer p50", "ms", 10.7, 1.4, 3),
            Figure("B4 RSS", "MiB", 80.4, None, 1),
        ]
    )
    return report


def test_the_tables_carry_value_raw_ratio_target_and_verdict() -> None:
    report = sample_report()
    text = report.text_table().splitlines()
    assert text[0].split() == ["figure", "value", "raw", "ratio", "target", "met", "repeats"]
    assert text[2].split()[:6] == ["B1", "short", "runs/s", "45.2", "runs/s", "1,111"]
    assert "0.04x" in text[2] and "NO" in text[2]
    assert "10.7 ms" in text[3] and "1.40 ms" in text[3] and "7.64x" in text[3]
    assert "80.4 MiB" in text[4] and "yes" in text[4]
    markdown = report.markdown_table().splitlines()
    assert len(markdown) == 2 + 3 and all(line.startswith("| ") for line in markdown[2:])
    assert report.missed() == ["B1 short runs/s", "B2 202 answer p50"]


def test_each_mode_has_one_generated_section_and_the_rest_stays() -> None:
    text = INTRO + "\nA note kept by hand.\n"
    text = replace_section(text, "full", "## Full run\nfirst")
    text = replace_section(text, "quick", "## Quick run\nfirst")
    text = replace_section(text, "full", "## Full run\nsecond")
    assert text.count(markers("full")[0]) == 1 and text.count(markers("quick")[1]) == 1
    assert "second" in text and "## Full run\nfirst" not in text and "## Quick run\nfirst" in text
    assert text.startswith(INTRO) and "A note kept by hand." in text


def test_the_section_describes_the_machine_and_the_missed_targets() -> None:
    body = section_body(
        quick=True,
        report=sample_report(),
        machine=MACHINE,
        command_line="python -m bench --quick",
        code="abc1234",
        wall_s=95,
    )
    assert body.startswith("## Quick run")
    expected = [
        "Test CPU",
        "2 logical CPUs",
        "23.5 GiB",
        "PostgreSQL 16.2",
        "Redis 7.0.15",
        "`python -m bench --quick`",
        "abc1234",
        "| B2 202 answer p50 | 10.7 ms |",
        "Targets missed: B1 short runs/s, B2 202 answer p50.",
    ]
    assert [text for text in expected if text not in body] == []


def test_pool_trouble_is_found_in_the_nodes_log() -> None:
    entries = [
        {"event": "store unavailable", "error": "couldn't get a connection after 2.00 sec"},
        {"event": "discarding broken connection", "logger": "psycopg.pool", "level": "warning"},
        {"event": "pool ready", "logger": "psycopg.pool", "level": "info"},
        {"event": "request", "path": "/healthz", "level": "info"},
    ]
    lines = [*(json.dumps(entry) for entry in entries), "not json at all"]
    assert [is_pool_trouble(line) for line in lines] == [True, True, False, False, False]


def test_the_top_of_a_profile_counts_self_time() -> None:
    collapsed = "main;serve;poll 30\nmain;serve;claim 60\nmain;handle;claim 10\n"
    top = top_frames(collapsed).splitlines()
    assert "100 samples" in top[0]
    assert top[1].split() == ["70.0", "%", "claim"] and top[2].split() == ["30.0", "%", "poll"]
    # 100 samples at 100 Hz over 4 s: a thread held the GIL a quarter of the time
    assert "the GIL held 25 % of the time" in top_frames(collapsed, seconds=4.0).splitlines()[0]


TINY = dataclasses.replace(
    QUICK, b2_runs=3, b2_repeats=1, b3_bytes=1 << 20, b3_repeats=1, b5_runs=2, b5_repeats=1
)


def test_small_real_benchmarks_give_figures_with_their_raw_limits(
    service: Service, tmp_path: Path
) -> None:
    ctx = Context(NodeUnderTest(service), TINY, tmp_path)

    async def run_all() -> list[Figure]:
        figures = await b2_light_load.measure(ctx)
        figures += await b3_big_output.measure(ctx)  # read back byte-exact, or it raises
        return figures + await b5_stop.measure(ctx)

    figures = {f.key: f for f in asyncio.run(run_all())}
    assert ctx.failures == []
    for key in ("B2 202 answer p50", "B2 start → terminal p99", "B3 output stored"):
        figure = figures[key]
        assert figure.value > 0 and figure.raw is not None and figure.raw > 0, figure
        assert figure.ratio == pytest.approx(figure.value / figure.raw)
    # A run's round trip contains its own 202 answer.
    assert figures["B2 start → terminal p50"].value >= figures["B2 202 answer p50"].value
    assert figures["B5 survivors"].value == 0
    assert figures["B5 stop → stopped p99"].value > 0


def test_where_autovacuum_is_off_the_bench_vacuums_in_its_place(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        if conn.execute("SHOW autovacuum").fetchone() == ("on",):
            pytest.skip("this PostgreSQL server runs autovacuum: the stand-in stays idle")
        conn.execute("CREATE TABLE churn (n int)")
        conn.execute("INSERT INTO churn SELECT generate_series(1, 100)")
        conn.execute("DELETE FROM churn")
    notes: list[str] = []

    def vacuumed() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT last_vacuum IS NOT NULL AND last_analyze IS NOT NULL"
                " FROM pg_stat_user_tables WHERE relname = 'churn'"
            ).fetchone()
        return row == (True,)

    with autovacuum_stand_in(database_url, notes, period_s=0.1):
        wait_until(vacuumed, 30, "the stand-in to vacuum and analyze the scratch database")
    assert len(notes) == 1 and notes[0].startswith("autovacuum is off")
