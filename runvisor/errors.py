"""The exception hierarchy: every error a user can cause or meet, mapped to HTTP in one place."""

from __future__ import annotations


class RunvisorError(Exception):
    """Base of every error runvisor reports to a client."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(RunvisorError):
    status, code = 400, "bad_request"


class Unauthorized(RunvisorError):
    status, code = 401, "unauthorized"


class Forbidden(RunvisorError):
    status, code = 403, "forbidden"


class NotFound(RunvisorError):
    status, code = 404, "not_found"


class Conflict(RunvisorError):
    status, code = 409, "conflict"


class PayloadTooLarge(RunvisorError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(RunvisorError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(RunvisorError):
    status, code = 422, "validation_error"


class TooManyRequests(RunvisorError):
    status, code = 429, "too_many_requests"
    retry_after_s = 1  # sent as Retry-After


class ServiceUnavailable(RunvisorError):
    status, code = 503, "unavailable"


class StoreUnavailable(ServiceUnavailable):
    """PostgreSQL or Redis cannot be reached right now; the caller may retry."""

    code = "store_unavailable"


class SettingsError(Exception):
    """A RUNVISOR_* setting is invalid; start-up stops with this one line."""


class Fenced(Exception):
    """This node's attempt was superseded (ended or taken over by the Supervisor or another
    node): its late writes are refused, and the actor that made them must stand down."""
