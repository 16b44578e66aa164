"""posix_spawn(3) called through ctypes, which lets go of the GIL for the call.

os.posix_spawn holds the GIL while the vfork child runs up to its exec: one to two
milliseconds a run on a busy machine, every other thread of the node (the HTTP event loop
among them) standing still meanwhile; under a burst of short runs it was the largest single
item of the GIL's time. The same libc call through ctypes releases the GIL, so the node goes
on while the child starts. The subset of os.posix_spawn the spawn uses: file actions (open,
dup2, close), setsid, setsigmask, setsigdef. Where libc lacks what this needs, or for a file
action this does not know, os.posix_spawn is called instead.

Only the call itself lets go of the GIL. Building its arguments (file actions, attributes, the
signal sets: some seventy small libc calls) goes through a handle that keeps the GIL
(ctypes.PyDLL), and happens before the caller takes its spawn guard (`prepared_spawn`): with a
GIL-releasing call each, every one of them waited to get the GIL back behind the node's busy
threads, inside the guard, and 200 spawns at once queued behind each other for a second.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

# glibc's and musl's flag values (spawn.h)
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08
_SETSID = 0x80
_OPAQUE_BYTES = 1024  # posix_spawn_file_actions_t is 80 bytes, posix_spawnattr_t 336 (glibc)
_SIGSET_BYTES = 128

FileAction = tuple[object, ...]
# Close every descriptor from N up: os.POSIX_SPAWN_CLOSEFROM (Python 3.13+), the same value
# here for glibc's posix_spawn_file_actions_addclosefrom_np (2.34+) through ctypes.
CLOSEFROM = getattr(os, "POSIX_SPAWN_CLOSEFROM", 3)


_FUNCTIONS = (
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
)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """libc for the spawn itself: the GIL is let go for the call."""
    return _open(ctypes.CDLL)


@functools.cache
def _libc_held() -> ctypes.CDLL | None:
    """libc for building the spawn's arguments: microseconds of memory work each, so the GIL
    is kept (a GIL-releasing call would wait to get it back, up to a switch interval)."""
    return _open(ctypes.PyDLL)


def _open(kind: type[ctypes.CDLL]) -> ctypes.CDLL | None:
    try:
        # The process's own symbols, libc's among them: no library search (find_library runs
        # ldconfig in a subprocess, which the node's orphan reaper could reap).
        libc = kind(None, use_errno=True)
        for name in _FUNCTIONS:
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
    if hasattr(libc, "posix_spawn_file_actions_addclosefrom_np"):
        libc.posix_spawn_file_actions_addclosefrom_np.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return libc


def available() -> bool:
    return _libc() is not None and _libc_held() is not None


@functools.cache
def closefrom_supported() -> bool:
    """Whether a CLOSEFROM file action is understood here (the ctypes path, or os's)."""
    return CLOSEFROM in _known_actions() or hasattr(os, "POSIX_SPAWN_CLOSEFROM")


@contextlib.contextmanager
def prepared_spawn(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    file_actions: Iterable[FileAction],
    setsid: bool,
    setsigmask: Iterable[int],
    setsigdef: Iterable[int],
) -> Iterator[Callable[[], int]]:
    """os.posix_spawn(path, argv, env, file_actions=..., setsid=..., setsigmask=...,
    setsigdef=...) in two steps: the arguments built now (bad input raises here as
    os.posix_spawn would: ValueError for a NUL in an argument or the environment, or a name
    with '='; at the call where os.posix_spawn stands in), then what it yields spawns, once,
    without holding the GIL, and returns the child's pid (OSError if the spawn fails)."""
    actions = list(file_actions)
    libc, held = _libc(), _libc_held()
    if libc is None or held is None or any(a[0] not in _known_actions() for a in actions):
        sigmask, sigdef = list(setsigmask), list(setsigdef)
        yield lambda: os.posix_spawn(
            path, list(argv), dict(env), file_actions=actions, setsid=setsid,
            setsigmask=sigmask, setsigdef=sigdef,
        )  # fmt: skip
        return
    c_argv = _strings([os.fsencode(arg) for arg in argv], "argument")
    env_bytes = []
    for name, value in env.items():
        if "=" in name or not name:
            raise ValueError(f"illegal environment variable name: {name!r}")
        env_bytes.append(os.fsencode(name) + b"=" + os.fsencode(value))
    c_env = _strings(env_bytes, "environment variable")
    c_path = os.fsencode(path)
    fa = ctypes.create_string_buffer(_OPAQUE_BYTES)
    attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _check(held.posix_spawn_file_actions_init(fa))
    try:
        _check(held.posix_spawnattr_init(attr))
        try:
            keep = _add_file_actions(held, fa, actions)  # noqa: F841  # paths live until the call
            flags = _SETSIGMASK | _SETSIGDEF | (_SETSID if setsid else 0)
            _check(held.posix_spawnattr_setflags(attr, flags))
            _check(held.posix_spawnattr_setsigmask(attr, _sigset(frozenset(setsigmask))))
            _check(held.posix_spawnattr_setsigdefault(attr, _sigset(frozenset(setsigdef))))

            def start() -> int:
                pid = ctypes.c_int(0)
                err = libc.posix_spawn(ctypes.byref(pid), c_path, fa, attr, c_argv, c_env)
                if err:
                    raise OSError(err, os.strerror(err), path)
                return pid.value

            yield start
        finally:
            held.posix_spawnattr_destroy(attr)
    finally:
        held.posix_spawn_file_actions_destroy(fa)


@functools.cache
def _known_actions() -> frozenset[object]:
    """The file actions the ctypes path takes (any other: os.posix_spawn)."""
    known = {os.POSIX_SPAWN_OPEN, os.POSIX_SPAWN_DUP2, os.POSIX_SPAWN_CLOSE}
    held = _libc_held()
    if held is not None and hasattr(held, "posix_spawn_file_actions_addclosefrom_np"):
        known.add(CLOSEFROM)
    return frozenset(known)


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
        elif tag == CLOSEFROM:
            _check(libc.posix_spawn_file_actions_addclosefrom_np(fa, action[1]))
        else:
            _check(libc.posix_spawn_file_actions_addclose(fa, action[1]))
    return paths


def _strings(items: list[bytes], what: str) -> ctypes.Array[ctypes.c_char_p]:
    for item in items:
        if b"\0" in item:
            raise ValueError(f"embedded null byte in an {what}")
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


@functools.lru_cache(maxsize=8)
def _sigset(signals: frozenset[int]) -> ctypes.Array[ctypes.c_char]:
    """A sigset_t of `signals`, built once (posix_spawnattr_set* copy it, never change it)."""
    held = _libc_held()
    assert held is not None
    sigset = ctypes.create_string_buffer(_SIGSET_BYTES)
    _check(held.sigemptyset(sigset))
    for signum in sorted(signals):
        _check(held.sigaddset(sigset, int(signum)))
    return sigset


def _check(result: int) -> None:
    if result != 0:  # an error number (posix_spawn_*), or -1 and errno (sigaddset)
        err = result if result > 0 else ctypes.get_errno()
        raise OSError(err, os.strerror(err))
