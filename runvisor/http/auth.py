"""Bearer/legacy token authentication and role checks (pure: no I/O).

Tokens come from RUNVISOR_TOKENS as comma-separated `role:token` entries; a token may be
written `sha256:HEX` so the plain secret never has to sit in the environment. Only digests
are kept in memory, and nothing here ever echoes a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from runvisor.errors import Forbidden, SettingsError, Unauthorized

SETTING = "RUNVISOR_TOKENS"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# Header values cannot carry these reliably, so a token containing one could never be presented.
_BAD_TOKEN_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


class Role(IntEnum):
    """Roles ordered by privilege: each one may do everything the ones below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who made a request. `name` holds a short digest prefix, never the token: safe to log."""

    role: Role
    name: str


def _principal(role: Role, digest: bytes) -> Principal:
    return Principal(role=role, name=f"{role.label}:{digest.hex()[:8]}")


class TokenTable:
    """Known token digests and their roles; build it with `parse_tokens`."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[bytes, Role] | None = None) -> None:
        self._entries: tuple[tuple[bytes, Role], ...] = tuple((entries or {}).items())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # digests only, but there is no reason to print even those
        return f"TokenTable({len(self._entries)} tokens)"

    def lookup(self, token: str) -> Principal | None:
        """The principal for a presented token, or None if the token is unknown."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Role | None = None
        # Compare against every entry without stopping early: timing says nothing about the table.
        for known, role in self._entries:
            if hmac.compare_digest(known, digest):
                found = role
        return None if found is None else _principal(found, digest)

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The principal for a request's headers; raises Unauthorized (missing or invalid token)."""
        token = _presented_token(headers)
        principal = self.lookup(token)
        if principal is None:
            raise Unauthorized("the token is not valid", code="invalid_token")
        return principal


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive, a plain dict (tests, other callers) is not.
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def _presented_token(headers: Mapping[str, str]) -> str:
    authorization = (_header(headers, "authorization") or "").strip()
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    legacy = (_header(headers, "token") or "").strip()
    if legacy:
        return legacy
    if authorization:
        # Credentials were sent, just not in a form we accept: say so rather than "missing".
        raise Unauthorized("the Authorization header must be 'Bearer TOKEN'", code="invalid_token")
    raise Unauthorized(
        "a token is required: send 'Authorization: Bearer TOKEN' or a 'token' header",
        code="missing_token",
    )


def require(principal: Principal, role: Role) -> None:
    """Raise Forbidden unless `principal` has at least `role`."""
    if principal.role < role:
        raise Forbidden(
            f"this action needs the {role.label} role; "
            f"the token has the {principal.role.label} role"
        )


def parse_tokens(spec: str, *, setting: str = SETTING) -> TokenTable:
    """Parse RUNVISOR_TOKENS (or the tokens file's entries). Raises SettingsError naming the
    entry's position, never its secret."""
    roles = {r.label: r for r in Role}
    table: dict[bytes, Role] = {}
    position = 0
    for raw_entry in spec.split(","):
        entry = raw_entry.strip()
        if not entry:
            continue
        position += 1
        where = f"{setting}: entry {position}"
        role_name, sep, token = entry.partition(":")
        if not sep:
            raise SettingsError(f"{where}: expected role:token")
        role = roles.get(role_name.strip().lower())
        if role is None:
            # The role part is not echoed: a swapped "token:role" entry would print the secret.
            raise SettingsError(f"{where}: unknown role (expected viewer, operator or admin)")
        token = token.strip()
        if not token:
            raise SettingsError(f"{where}: empty token")
        if token.lower().startswith("sha256:"):
            hex_digest = token[len("sha256:") :].strip()
            if not _HEX64.fullmatch(hex_digest):
                raise SettingsError(f"{where}: sha256: must be followed by 64 hex digits")
            digest = bytes.fromhex(hex_digest)
        else:
            if _BAD_TOKEN_CHARS.search(token):
                raise SettingsError(f"{where}: token contains whitespace or control characters")
            digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        previous = table.get(digest)
        if previous is not None and previous != role:
            raise SettingsError(f"{where}: the same token already has the {previous.label} role")
        table[digest] = role
    return TokenTable(table)


def generate_admin_token() -> str:
    """A fresh random admin token (for a service started without RUNVISOR_TOKENS)."""
    return secrets.token_urlsafe(32)
