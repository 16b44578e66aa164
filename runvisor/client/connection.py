"""Where the server is and which token to send: flags, then RUNVISOR_URL / RUNVISOR_TOKEN, then
the admin token that `serve` keeps in its data directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runvisor.client.errors import USAGE, ClientError

DEFAULT_URL = "http://127.0.0.1:8080"
# The file `serve` writes when RUNVISOR_TOKENS is unset (runvisor/service.py, ADMIN_TOKEN_FILE;
# a test checks both names agree).
ADMIN_TOKEN_FILE = "admin.token"


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    token_source: str  # where the token came from, said in errors instead of the token

    def __repr__(self) -> str:  # never show the token, even in a debugger or a log
        return f"Target(url={self.url!r}, token_source={self.token_source!r})"


def data_dir_of(flag: str | None) -> Path:
    """--data-dir, else RUNVISOR_DATA_DIR, else the server's default."""
    raw = flag or os.environ.get("RUNVISOR_DATA_DIR")
    if raw:
        return Path(raw).expanduser()
    from runvisor.config import default_data_dir

    return default_data_dir()


def resolve_target(*, url: str | None, token: str | None, data_dir: str | None) -> Target:
    """The server and token to use. A token from a flag or the environment wins; without one,
    the admin token in the data directory if there is one; else none (the server will say
    401)."""
    url = (url or os.environ.get("RUNVISOR_URL") or DEFAULT_URL).rstrip("/")
    if token:
        return Target(url, _checked(token, "--token"), "--token")
    from_env = os.environ.get("RUNVISOR_TOKEN")
    if from_env:
        return Target(url, _checked(from_env, "RUNVISOR_TOKEN"), "RUNVISOR_TOKEN")
    path = data_dir_of(data_dir) / ADMIN_TOKEN_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return Target(url, None, f"no --token, RUNVISOR_TOKEN or {path}")
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}", exit_status=USAGE) from None
    return Target(url, _checked(text, str(path)), str(path))


def _checked(token: str, source: str) -> str:
    token = token.strip()
    if not token or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in token):
        # Said without the token: it is a secret even when it is malformed.
        raise ClientError(
            f"the token from {source} is empty or holds whitespace or control characters",
            exit_status=USAGE,
        )
    return token
