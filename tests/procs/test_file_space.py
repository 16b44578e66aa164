"""Punching holes in a file: its blocks are freed, its size and the other bytes stay."""

from __future__ import annotations

import os
from pathlib import Path

from runvisor.procs.file_space import BLOCK, allocated_bytes, punch_hole

MIB = 1024 * 1024


def test_a_punched_range_frees_its_blocks_and_keeps_size_and_offsets(tmp_path: Path) -> None:
    path = tmp_path / "spool.out"
    data = os.urandom(4 * MIB)
    path.write_bytes(data)
    os.sync()
    before = allocated_bytes(path)
    assert before >= 4 * MIB
    fd = os.open(path, os.O_RDWR)
    try:
        punch_hole(fd, 0, 3 * MIB)
        punch_hole(fd, 0, 0)  # nothing to do
    finally:
        os.close(fd)
    assert path.stat().st_size == 4 * MIB
    assert allocated_bytes(path) <= before - 3 * MIB + BLOCK
    content = path.read_bytes()
    assert content[: 3 * MIB] == b"\0" * (3 * MIB) and content[3 * MIB :] == data[3 * MIB :]
    with open(path, "ab") as appending:  # a writer appending goes on at the end, as before
        appending.write(b"more")
    assert path.read_bytes()[4 * MIB :] == b"more"
