"""posix_spawn(3) called through ctypes, which lets go of the GIL for the call.

os.posix_spawn holds the GIL while the vfork child runs up to its exec: one to two
milliseconds a run on a busy machine, every other thread of the node (the HTTP event loop
among them) standing still meanwhile; under a burst of short runs it was the largest single
item of the GIL's time. The same libc call through ctypes releases the GIL, so the node goes
on while the child starts. The subset of os.posix_spawn the spawn uses: file actions (open,
dup2, close), setsid, setsigmask, setsigdef. Where libc lacks what this needs, or for a file
action this does not know, os.posix_spawn is called instead.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterable, Mapping, Sequence

# glibc's and musl's flag values (spawn.h)
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08
_SETSID = 0x80
_OPAQUE_BYTES = 1024  # posix_spawn_file_actions_t is 80 bytes, posix_spawnattr_t 336 (glibc)
_SIGSET_BYTES = 128

FileAction = tuple[object, ...]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        # The process's own symbols, libc's among them: no library search (find_library runs
        # ldconfig in a subprocess, which the node's orphan reaper could reap).
        libc = ctypes.CDLL(None, use_errno=True)
        for name in (
            "posix_spawn",
            "posix_spawn_file_actions_init",
            "posix_spawn_file_actions_addopen",
            "posix_spawn_file_actions_adddup2",
            "posix_spawn_file_actions_addclose",
            "posix_spawn_file_actions_destroy",
            "posix_spawnattr_init",
            "posix_spawnattr_setflags",
            "posix_spawnattr_setsigmask",
            "posix_spawnattr_setsigdefault",
            "posix_spawnattr_destroy",
            "sigemptyset",
            "sigaddset",
        ):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    libc.posix_spawn.argtypes = [
        ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p),
    ]  # fmt: skip
    libc.posix_spawn_file_actions_addopen.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
    ]  # fmt: skip
    libc.posix_spawn_file_actions_adddup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    libc.posix_spawn_file_actions_addclose.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
    libc.sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return libc


def available() -> bool:
    return _libc() is not None


def posix_spawn(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    file_actions: Iterable[FileAction],
    setsid: bool,
    setsigmask: Iterable[int],
    setsigdef: Iterable[int],
) -> int:
    """os.posix_spawn(path, argv, env, file_actions=..., setsid=..., setsigmask=...,
    setsigdef=...) without holding the GIL; the child's pid. Raises as os.posix_spawn does:
    OSError for a failed spawn, ValueError for a NUL in an argument or the environment, or a
    name with '='."""
    actions = list(file_actions)
    libc = _libc()
    if libc is None or any(a[0] not in _KNOWN_ACTIONS for a in actions):
        return os.posix_spawn(
            path, list(argv), dict(env), file_actions=actions, setsid=setsid,
            setsigmask=setsigmask, setsigdef=setsigdef,
        )  # fmt: skip
    c_argv = _strings([os.fsencode(arg) for arg in argv], "argument")
    env_bytes = []
    for name, value in env.items():
        if "=" in name or not name:
            raise ValueError(f"illegal environment variable name: {name!r}")
        env_bytes.append(os.fsencode(name) + b"=" + os.fsencode(value))
    c_env = _strings(env_bytes, "environment variable")
    fa = ctypes.create_string_buffer(_OPAQUE_BYTES)
    attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _check(libc.posix_spawn_file_actions_init(fa))
    try:
        _check(libc.posix_spawnattr_init(attr))
        try:
            keep = _add_file_actions(libc, fa, actions)  # noqa: F841  # paths live until the call
            flags = _SETSIGMASK | _SETSIGDEF | (_SETSID if setsid else 0)
            _check(libc.posix_spawnattr_setflags(attr, flags))
            _check(libc.posix_spawnattr_setsigmask(attr, _sigset(libc, setsigmask)))
            _check(libc.posix_spawnattr_setsigdefault(attr, _sigset(libc, setsigdef)))
            pid = ctypes.c_int(0)
            err = libc.posix_spawn(ctypes.byref(pid), os.fsencode(path), fa, attr, c_argv, c_env)
            if err:
                raise OSError(err, os.strerror(err), path)
            return pid.value
        finally:
            libc.posix_spawnattr_destroy(attr)
    finally:
        libc.posix_spawn_file_actions_destroy(fa)


_KNOWN_ACTIONS = (os.POSIX_SPAWN_OPEN, os.POSIX_SPAWN_DUP2, os.POSIX_SPAWN_CLOSE)


def _add_file_actions(
    libc: ctypes.CDLL, fa: ctypes.Array[ctypes.c_char], actions: list[FileAction]
) -> list[bytes]:
    paths: list[bytes] = []
    for action in actions:
        tag = action[0]
        if tag == os.POSIX_SPAWN_OPEN:
            _, fd, file, flags, mode = action
            paths.append(os.fsencode(file))  # type: ignore[arg-type]
            _check(libc.posix_spawn_file_actions_addopen(fa, fd, paths[-1], flags, mode))
        elif tag == os.POSIX_SPAWN_DUP2:
            _check(libc.posix_spawn_file_actions_adddup2(fa, action[1], action[2]))
        else:
            _check(libc.posix_spawn_file_actions_addclose(fa, action[1]))
    return paths


def _strings(items: list[bytes], what: str) -> ctypes.Array[ctypes.c_char_p]:
    for item in items:
        if b"\0" in item:
            raise ValueError(f"embedded null byte in an {what}")
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def _sigset(libc: ctypes.CDLL, signals: Iterable[int]) -> ctypes.Array[ctypes.c_char]:
    sigset = ctypes.create_string_buffer(_SIGSET_BYTES)
    _check(libc.sigemptyset(sigset))
    for signum in signals:
        _check(libc.sigaddset(sigset, int(signum)))
    return sigset


def _check(result: int) -> None:
    if result != 0:  # an error number (posix_spawn_*), or -1 and errno (sigaddset)
        err = result if result > 0 else ctypes.get_errno()
        raise OSError(err, os.strerror(err))
