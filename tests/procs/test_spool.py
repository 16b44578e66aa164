"""SpoolLayout: the one place that names a run's spool, status and working-directory paths,
and removes them."""

from __future__ import annotations

from pathlib import Path

from runvisor.procs.spool import SpoolLayout


def test_paths_follow_the_documented_layout(tmp_path: Path) -> None:
    spool = SpoolLayout(tmp_path / "spool", tmp_path / "work")
    assert spool.run_spool(7) == tmp_path / "spool" / "7"
    assert spool.run_work(7) == tmp_path / "work" / "7"
    assert spool.output(7, 2) == tmp_path / "spool" / "7" / "2.out"
    assert spool.status(7, 2) == tmp_path / "spool" / "7" / "2.status"


def test_an_attempts_removal_keeps_the_others_and_a_runs_removal_takes_both_directories(
    tmp_path: Path,
) -> None:
    spool = SpoolLayout(tmp_path / "spool", tmp_path / "work")
    for run_id in (7, 8):
        spool.run_spool(run_id).mkdir(parents=True)
        spool.run_work(run_id).mkdir(parents=True)
    for attempt in (1, 2):
        spool.output(7, attempt).write_bytes(b"x")
        spool.status(7, attempt).write_text("0")
    (spool.spool_dir / "not-a-run").mkdir()

    spool.remove_attempt(7, 1)
    spool.remove_attempt(7, 5)  # never spooled: nothing to do, no error
    assert sorted(p.name for p in spool.run_spool(7).iterdir()) == ["2.out", "2.status"]
    assert sorted(spool.spooled_runs()) == [7, 8]

    spool.remove_run(7)
    assert not spool.run_spool(7).exists() and not spool.run_work(7).exists()
    assert spool.spooled_runs() == [8] and spool.run_work(8).is_dir()
