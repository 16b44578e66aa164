"""The client's exit statuses and the one error it raises: printed as one line, never a trace."""

from __future__ import annotations

# Exit statuses (README, "Command-line client"). `logs -f` and `run --follow` exit with the
# run's own status instead (follow.run_exit_status), which may coincide with these.
OK = 0
RUN_FAILED = 1
USAGE = 2  # also what click uses for a bad option
UNREACHABLE = 3
NOT_FOUND = 4
CONFLICT = 5
SERVER_ERROR = 6
INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class ClientError(Exception):
    """An error to print as `runvisor: MESSAGE` on stderr, exiting with `exit_status`."""

    def __init__(self, message: str, *, exit_status: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status


def exit_status_for_http(status: int) -> int:
    """What an error answer of the server means for a script."""
    if status == 404:
        return NOT_FOUND
    if status == 409:
        return CONFLICT
    if status in (502, 503, 504):
        return UNREACHABLE
    if 400 <= status < 500 and status != 429:
        return USAGE  # 400, 401, 403, 413, 415, 422: the request or its token is wrong
    return SERVER_ERROR
