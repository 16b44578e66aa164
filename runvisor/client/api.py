"""RunvisorClient: the v1 routes over httpx, with every failure turned into a ClientError."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from runvisor import __version__
from runvisor.client.connection import Target
from runvisor.client.errors import UNREACHABLE, USAGE, ClientError, exit_status_for_http

JSON = dict[str, Any]
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 75.0  # above the longest ?wait_s (60) the client sends


class RunvisorClient:
    """One node's API. Each method answers the server's JSON, or raises ClientError."""

    def __init__(self, target: Target) -> None:
        self.target = target
        headers = {"User-Agent": f"runvisor-cli/{__version__}"}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        try:
            self._http = httpx.Client(
                base_url=target.url,
                headers=headers,
                timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
            raise ClientError(f"bad server URL {target.url!r}: {exc}", exit_status=USAGE) from None

    def close(self) -> None:
        self._http.close()

    # -- commands

    def list_commands(self, *, limit: int, offset: int) -> JSON:
        return self._json("GET", "/api/v1/commands", params={"limit": limit, "offset": offset})

    def create_command(self, body: Mapping[str, Any]) -> JSON:
        return self._json("POST", "/api/v1/commands", json=body)

    def command(self, command_id: int) -> JSON:
        return self._json("GET", f"/api/v1/commands/{command_id}")

    def delete_command(self, command_id: int) -> None:
        self._request("DELETE", f"/api/v1/commands/{command_id}")

    # -- runs

    def start_run(self, command_id: int, body: Mapping[str, Any]) -> JSON:
        return self._json("POST", f"/api/v1/commands/{command_id}/runs", json=body)

    def list_runs(self, params: Mapping[str, Any]) -> JSON:
        return self._json("GET", "/api/v1/runs", params=params)

    def run(self, run_id: int, *, wait_s: int | None = None) -> JSON:
        params = {} if wait_s is None else {"wait_s": wait_s}
        return self._json("GET", f"/api/v1/runs/{run_id}", params=params)

    def stop_run(self, run_id: int, *, grace_s: float | None) -> JSON:
        body = {} if grace_s is None else {"grace_s": grace_s}
        return self._json("POST", f"/api/v1/runs/{run_id}/stop", json=body)

    def output(
        self, run_id: int, *, offset: int, follow: bool, write: Callable[[bytes], None]
    ) -> int:
        """Stream the run's output from `offset` into `write`, a chunk as it arrives; with
        `follow`, until the run ends. Answers how many bytes were written. With `follow`, a
        connection cut mid-stream raises httpx.TransportError (the caller resumes from its
        offset); without, a ClientError like any other failure."""
        params: dict[str, Any] = {"offset": offset}
        if follow:
            params["follow"] = 1
        # A followed run may print nothing for hours: no read timeout then.
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S) if follow else None
        written = 0
        path = f"/api/v1/runs/{run_id}/output"
        with self._stream(path, params, timeout, resumable=follow) as response:
            for chunk in response.iter_bytes():
                write(chunk)
                written += len(chunk)
        return written

    # -- nodes

    def nodes(self) -> JSON:
        return self._json("GET", "/api/v1/nodes")

    def node(self, node_id: str) -> JSON:
        return self._json("GET", f"/api/v1/nodes/{_path_part(node_id)}")

    def drain(self, node_id: str, *, deadline_s: float | None) -> JSON:
        body = {} if deadline_s is None else {"deadline_s": deadline_s}
        return self._json("POST", f"/api/v1/nodes/{_path_part(node_id)}/drain", json=body)

    # -- plumbing

    def _json(self, method: str, path: str, **kw: Any) -> JSON:
        response = self._request(method, path, **kw)
        try:
            body = response.json()
        except ValueError:
            raise ClientError(
                f"{method} {path}: the server's answer is not JSON", exit_status=UNREACHABLE
            ) from None
        if not isinstance(body, dict):
            return {"items": body}
        return body

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with self._errors_of(path):
            response = self._http.request(method, path, **kw)
        if response.is_error:
            raise self._http_error(response)
        return response

    @contextmanager
    def _stream(
        self,
        path: str,
        params: Mapping[str, Any],
        timeout: httpx.Timeout | None,
        *,
        resumable: bool,
    ) -> Iterator[httpx.Response]:
        kw: dict[str, Any] = {"params": params}
        if timeout is not None:
            kw["timeout"] = timeout
        errors = self._errors_of(path, resumable=resumable)
        with errors, self._http.stream("GET", path, **kw) as r:
            if r.is_error:
                r.read()
                raise self._http_error(r)
            yield r

    @contextmanager
    def _errors_of(self, path: str, *, resumable: bool = False) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise ClientError(
                f"cannot reach {self.target.url}: {_reason(exc)}", exit_status=UNREACHABLE
            ) from None
        except httpx.TimeoutException:
            raise ClientError(
                f"{self.target.url} did not answer in time ({path})", exit_status=UNREACHABLE
            ) from None
        except (httpx.ReadError, httpx.RemoteProtocolError):
            if resumable:
                raise  # a follower resumes from its offset
            raise ClientError(
                f"{self.target.url} closed the connection ({path})", exit_status=UNREACHABLE
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ClientError(
                f"bad server URL {self.target.url!r}: {exc}", exit_status=USAGE
            ) from None
        except httpx.HTTPError as exc:
            raise ClientError(
                f"{self.target.url}: {type(exc).__name__}: {exc}", exit_status=UNREACHABLE
            ) from None

    def _http_error(self, response: httpx.Response) -> ClientError:
        """`401 invalid_token: the token is not valid`, from the server's error body."""
        code, message = _error_fields(response)
        if response.status_code == 401:
            source = self.target.token_source
            message += f" (token from {source})" if self.target.token else f" ({source})"
        return ClientError(
            f"{response.status_code} {code}: {message}",
            exit_status=exit_status_for_http(response.status_code),
        )


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    reason = response.reason_phrase.lower().replace(" ", "_") or "error"
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        return str(error.get("code", reason)), str(error.get("message", ""))
    if isinstance(error, str):
        return reason, error
    text = response.text.strip().splitlines()
    return reason, text[0][:200] if text else response.reason_phrase


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc)
    if "Connection refused" in text or "[Errno 111]" in text:
        return "connection refused"
    return text or type(exc).__name__


def _path_part(value: str) -> str:
    """A node id as one path segment: anything that could change the path is escaped."""
    from urllib.parse import quote

    return quote(value, safe="")
