"""The native error shape, `{"error": {"code", "message", "details"}}`, built in one place for every route.

Dialects that prescribe another shape get theirs here and only here: Omnitool's `{"error": "<message>"}` on its
paths, GPTBots' `{"code", "message"}` on `/v1/workflow/*`, Omni's `{"detail", "status"}` on `/api/v1/models*` and
`/api/v1/ai/*` (where, as Omni does, a request that fails validation is a 400).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.errors import ConveyorError, QueueFullError, RateLimitedError

log = logging.getLogger("conveyor.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one native error body."""
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


OMNITOOL_PATHS = ("/api/v1/workflow", "/fid")


def is_omnitool_path(path: str) -> bool:
    """Whether a path is one of Omnitool's routes (`/api/v1/workflow/*`, `/fid*`), whose clients read errors
    as Omnitool's `{"error": "<message>"}`."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OMNITOOL_PATHS)


def omnitool_error_body(message: str) -> dict[str, Any]:
    """The Omnitool dialect's error body, `{"error": "<message>"}` (with our honest status codes)."""
    return {"error": message}


GPTBOTS_PATHS = ("/v1/workflow",)


def is_gptbots_path(path: str) -> bool:
    """Whether a path is one of GPTBots' workflow routes (`/v1/workflow/*`), whose errors are `{"code", "message"}`."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in GPTBOTS_PATHS)


def gptbots_error_body(code: str, message: str) -> dict[str, Any]:
    """The GPTBots dialect's error body, `{"code", "message"}`: the native code (a string such as `input_invalid`)
    and message, with the native HTTP status. GPTBots documents no error shape; this one is ours and stable."""
    return {"code": code, "message": message}


OMNI_PATHS = ("/api/v1/models", "/api/v1/ai")


def is_omni_path(path: str) -> bool:
    """Whether a path is one of Omni's routes (`/api/v1/models*`, `/api/v1/ai/*`), whose errors are
    `{"detail", "status"}`."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OMNI_PATHS)


def omni_error_body(status: int, message: str) -> dict[str, Any]:
    """The Omni dialect's error body (Omni's `ApiError4xx`): `{"detail": "<message>", "status": <HTTP status>}`."""
    return {"detail": message, "status": status}


def dialect_error_body(path: str, code: str, message: str, details: Any = None, *, status: int) -> dict[str, Any]:
    """An error body in the shape the dialect of `path` prescribes (the native one outside the dialects' paths)."""
    if is_omni_path(path):
        return omni_error_body(status, message)
    if is_omnitool_path(path):
        return omnitool_error_body(message)
    if is_gptbots_path(path):
        return gptbots_error_body(code, message)
    return error_body(code, message, details)


def _respond(
    request: Request, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error in the shape the route's dialect prescribes (Omnitool's, GPTBots', Omni's), the native elsewhere."""
    body = dialect_error_body(request.scope["path"], code, message, details, status=status)
    return JSONResponse(body, status_code=status, headers=headers)


async def _conveyor_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConveyorError)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFullError | RateLimitedError) else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="conveyor"'}
    if exc.status >= 500:
        log.error("request failed: %s %s: %s", request.method, request.url.path, exc.code)
    return _respond(request, exc.status, exc.code, exc.message, exc.details, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": [str(part) for part in err.get("loc", ())], "message": err.get("msg", "")} for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(d['loc'])}: {d['message']}" for d in details[:5])
    if is_omni_path(request.scope["path"]):  # Omni answers a bad body or parameter with 400
        return _respond(request, 400, "bad_request", f"Bad Request: {summary}", details)
    return _respond(request, 422, "validation_error", f"request is invalid: {summary}", details)


async def _model_error(request: Request, exc: Exception) -> JSONResponse:
    """A body validated by pydantic inside a route (the lean submit) answers like FastAPI's own validation."""
    assert isinstance(exc, PydanticValidationError)
    return await _validation_error(request, RequestValidationError(_with_body_loc(exc.errors(include_url=False))))


def _with_body_loc(errors: list[Any]) -> list[Any]:
    return [{**err, "loc": ("body", *err.get("loc", ()))} for err in errors]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _respond(
        request,
        exc.status_code,
        _HTTP_CODES.get(exc.status_code, "http_error"),
        str(exc.detail),
        None,
        dict(exc.headers or {}),
    )


async def _nul_in_text(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL refused a NUL character in a text value the request carried (an id, a name): the client's fault."""
    return _respond(request, 400, "bad_request", "text must not contain NUL characters")


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _respond(request, 500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ConveyorError, _conveyor_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PydanticValidationError, _model_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
    try:
        from asyncpg.exceptions import CharacterNotInRepertoireError
    except ImportError:  # no PostgreSQL driver: SQLite stores NUL as any other character
        return
    app.add_exception_handler(CharacterNotInRepertoireError, _nul_in_text)
