"""Giving a file's disk space back without changing its size or offsets: fallocate(2) with
FALLOC_FL_PUNCH_HOLE. A spool file is appended to by the run (O_APPEND) while the service reads
it; a byte's position must stay its position (adoption maps spool positions to the run's
output offsets), so the file is never truncated: the stored part becomes a hole instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLOCK = 4096  # holes are punched in whole blocks; a partial block is only zeroed

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


class PunchUnsupported(OSError):
    """The file system cannot punch holes (EOPNOTSUPP)."""


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the blocks of [offset, offset + length) of the file open as `fd` (for writing); the
    range reads as zeros after. Raises PunchUnsupported where the file system cannot."""
    if length <= 0:
        return
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise PunchUnsupported(err, os.strerror(err))
    raise OSError(err, os.strerror(err))


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    """The disk space a file takes (its blocks), not its size."""
    return os.stat(path).st_blocks * 512
