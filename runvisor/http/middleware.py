"""Request middlewares: a log line and context per request, authentication, one error mapping."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from runvisor import metrics
from runvisor.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    RunvisorError,
    TooManyRequests,
    UnsupportedMediaType,
)
from runvisor.http.appkeys import PRINCIPAL, SETTINGS, TOKENS
from runvisor.http.auth import require
from runvisor.http.responses import Error, LegacyError
from runvisor.http.routes import REQUIRED_ROLES, is_legacy_path
from runvisor.logs import get_logger

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = get_logger("runvisor.http")
OPERATION_ID = "operation_id"  # set on each route's handler by the app factory
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
CLIENT_GONE_STATUS = 499  # logged for a request whose client went away before its answer ended


@web.middleware
async def request_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request, with a request id bound for every log line it causes."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:16]
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        seconds = time.perf_counter() - started
        metrics.observe_request(route_template(request), request.method, status, seconds)
        principal = request.get(PRINCIPAL)
        # A read that succeeded at debug, as Nomad and Consul log theirs: clients poll, and a
        # line per poll was a sixth of the event loop's time under load (the metrics count
        # them). Changes, refusals and failures at info.
        level = logging.DEBUG if request.method in _READS and status < 400 else logging.INFO
        log.log(
            level,
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round(seconds * 1000, 1),
            principal=principal.name if principal else None,
        )
        structlog.contextvars.unbind_contextvars("request_id")


def route_template(request: web.Request) -> str:
    """The matched route's path template (`/api/v1/runs/{id}`), never the raw path, whose ids
    would make a metric series per run; `unmatched` when no route took the request."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else metrics.UNMATCHED_ROUTE


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error to JSON: {"error": {code, message}} (v1), {"error": message} (legacy)."""
    try:
        return await handler(request)
    except RunvisorError as exc:
        return _error_response(request, exc)
    except web.HTTPRequestEntityTooLarge:
        return _error_response(
            request,
            PayloadTooLarge(
                f"the request body is over {request.app[SETTINGS].max_body_bytes} bytes"
                " (RUNVISOR_MAX_BODY_BYTES)"
            ),
        )
    except web.HTTPNotFound:
        return _error_response(request, NotFound(f"no route {request.path}", code="no_route"))
    except web.HTTPMethodNotAllowed as exc:
        problem = RunvisorError(
            f"{request.method} is not allowed here; use {', '.join(sorted(exc.allowed_methods))}",
            code="method_not_allowed",
        )
        problem.status = 405
        response = _error_response(request, problem)
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    except web.HTTPUnsupportedMediaType:
        return _error_response(request, UnsupportedMediaType("unsupported content type"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = (
            BadRequest(exc.reason or "bad request")
            if exc.status == 400
            else RunvisorError(
                exc.reason or "error",
                code=exc.reason.lower().replace(" ", "_") if exc.reason else None,
            )
        )
        problem.status = exc.status
        return _error_response(request, problem)
    except Exception as exc:
        if isinstance(exc, ConnectionError) and _client_gone(request):
            # Routine for a download: one line, no traceback. Nothing can be sent any more; the
            # request log shows the status nginx uses for it.
            log.info("client went away", path=request.path, reason=str(exc) or type(exc).__name__)
            return web.Response(status=CLIENT_GONE_STATUS)
        log.exception("unhandled error", path=request.path)
        return _error_response(request, RunvisorError("internal error; see the service log"))


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Deny by default: every route needs a token unless the route table says it is open."""
    operation = getattr(request.match_info.handler, OPERATION_ID, None)
    if operation is None:  # no such route: let the router's 404/405 through, no auth needed
        return await handler(request)
    role = REQUIRED_ROLES[operation]
    if role is not None:
        principal = request.app[TOKENS].authenticate(request.headers)
        request[PRINCIPAL] = principal
        require(principal, role)
    return await handler(request)


def _error_response(request: web.Request, exc: RunvisorError) -> web.Response:
    body = LegacyError.of(exc) if is_legacy_path(request.path) else Error.of(exc)
    response = web.json_response(body.to_json(), status=exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="runvisor"'
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def _client_gone(request: web.Request) -> bool:
    """The request's connection is closed (by the client, or cut off as too slow)."""
    transport = request.transport
    return transport is None or transport.is_closing()
