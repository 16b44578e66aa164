"""The user a run's code executes as (RUNVISOR_RUN_AS), and how the wrapper switches to it.

A service running as root runs its runs as `nobody` unless told otherwise: code a run executes
must not be able to read the service's environment and tokens, write its spool files or
signal it. The switch happens in the attempt wrapper, right before `bash`, with util-linux's
`setpriv` (real and effective uid and gid, supplementary groups cleared, no_new_privs so that
no setuid program can give the privileges back). The wrapper itself stays root: it records the
exit status in the service's spool, where the run user cannot write.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from dataclasses import dataclass

from runvisor.errors import SettingsError

SETTING = "RUNVISOR_RUN_AS"
DEFAULT_UNPRIVILEGED = "nobody"
# Looked up on a fixed path: the service's own PATH is not a trusted input either.
SETPRIV_SEARCH_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass(frozen=True, slots=True)
class RunUser:
    """Who a run executes as. `setpriv` is None when no switch is needed (same uid)."""

    uid: int
    gid: int
    name: str
    home: str | None
    setpriv: str | None = None

    @property
    def switches(self) -> bool:
        return self.setpriv is not None

    def describe(self) -> str:
        return f"{self.name} ({self.uid}:{self.gid})"


def resolve_run_user(raw: str | None, *, euid: int | None = None) -> RunUser:
    """RUNVISOR_RUN_AS (a user name, `uid` or `uid:gid`), or the default for this service.

    Unset: `nobody` when the service runs as root, else the service's own user (no switch: a
    process cannot change its uid without privileges). Raises SettingsError with the reason.
    """
    euid = os.geteuid() if euid is None else euid
    if raw is None or not raw.strip():
        target = _lookup(DEFAULT_UNPRIVILEGED) if euid == 0 else _from_uid(euid, os.getegid())
    else:
        target = _parse(raw.strip())
    if target.uid == euid and (euid != 0 or target.gid == os.getegid()):
        return target  # the service's own identity: nothing to switch
    if euid != 0:
        raise SettingsError(
            f"{SETTING}={raw!r}: the service runs as uid {euid} and cannot switch runs to "
            f"uid {target.uid} (that needs root); leave {SETTING} unset to run them as itself"
        )
    setpriv = find_setpriv(SETTING, f"running runs as {target.describe()}")
    return RunUser(target.uid, target.gid, target.name, target.home, setpriv)


def find_setpriv(setting: str, what: str) -> str:
    """util-linux's setpriv, on a fixed path; SettingsError naming `setting` when missing."""
    setpriv = shutil.which("setpriv", path=SETPRIV_SEARCH_PATH)
    if setpriv is None:
        raise SettingsError(
            f"{setting}: {what} needs util-linux's setpriv, which is not installed "
            f"(looked in {SETPRIV_SEARCH_PATH})"
        )
    return setpriv


def _parse(value: str) -> RunUser:
    user, sep, group = value.partition(":")
    if not user or (sep and not group):
        raise SettingsError(f"{SETTING}={value!r}: expected a user name, uid, or uid:gid")
    if user.isdigit() and user.isascii():
        uid = int(user)
        try:
            entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
        except KeyError:
            entry = None  # a bare uid with no passwd entry is fine (as in containers)
        if entry is None and not sep:
            raise SettingsError(f"{SETTING}={value!r}: uid {uid} has no passwd entry; give uid:gid")
        base = (
            RunUser(uid, entry.pw_gid, entry.pw_name, entry.pw_dir)
            if entry is not None
            else RunUser(uid, uid, str(uid), None)
        )
    else:
        base = _lookup(user)
    if not sep:
        return base
    return RunUser(base.uid, _group_id(group, value), base.name, base.home)


def _lookup(name: str) -> RunUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SettingsError(f"{SETTING}: no user named {name!r} on this machine") from None
    return RunUser(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def _from_uid(uid: int, gid: int) -> RunUser:
    try:
        entry = pwd.getpwuid(uid)
        return RunUser(uid, gid, entry.pw_name, entry.pw_dir)
    except KeyError:
        return RunUser(uid, gid, str(uid), None)


def _group_id(group: str, value: str) -> int:
    if group.isdigit() and group.isascii():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SettingsError(f"{SETTING}={value!r}: no group named {group!r}") from None
