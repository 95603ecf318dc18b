"""Domain errors. Each carries the HTTP status the API answers with; only `api/` builds responses."""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Base of every error a client can cause or see; the API answers `status` with `code` and the message."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequestError(ConveyorError):
    """The request is malformed; the API answers 400."""

    status = 400
    code = "bad_request"


class ValidationError(ConveyorError):
    """The request is well-formed but its content is invalid; the API answers 422 with every problem."""

    status = 422
    code = "validation_error"


class RecipeInvalidError(ValidationError):
    """A recipe failed validation; `details` lists every problem by node; the API answers 422."""

    code = "recipe_invalid"


class InputInvalidError(ValidationError):
    """A job's inputs do not match its recipe's input contract; the API answers 422."""

    code = "input_invalid"


class NotFoundError(ConveyorError):
    """Something named by id does not exist (or is not the caller's); the API answers 404."""

    status = 404
    code = "not_found"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found", details={"kind": kind, "id": ident})
        self.kind = kind
        self.ident = ident


class ConflictError(ConveyorError):
    """The request conflicts with the current state; the API answers 409."""

    status = 409
    code = "conflict"


class IllegalTransitionError(ConflictError):
    """A job move the state table does not allow (e.g. cancelling a finished job); the API answers 409."""

    code = "illegal_transition"


class QueueFullError(ConveyorError):
    """Too many jobs are waiting; the API answers 429 with `Retry-After`."""

    status = 429
    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(ConveyorError):
    """An API key is over its rate limit or its concurrent-jobs cap; the API answers 429 with `Retry-After`."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLargeError(ConveyorError):
    """A body, file or image is over its limit; the API answers 413."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaError(ValidationError):
    """A file is not of an accepted kind (e.g. not a real GIF/PNG/JPEG/WebP image); the API answers 422."""

    code = "unsupported_media"


class OutboundBlockedError(ValidationError):
    """An outbound URL is refused by the guard (scheme, private address, redirect); the API answers 422."""

    code = "outbound_blocked"


class OutboundFailedError(ConveyorError):
    """An outbound request failed (timeout, connection, too large); seen as a block error or 502."""

    status = 502
    code = "outbound_failed"


class UnauthorizedError(ConveyorError):
    """No credentials, or credentials that are not valid (expired, tampered, revoked); the API answers 401."""

    status = 401
    code = "unauthorized"


class ForbiddenError(ConveyorError):
    """Valid credentials whose scope does not allow this; the API answers 403."""

    status = 403
    code = "forbidden"


class ModelError(ConveyorError):
    """A language model gave no usable answer; seen as a block error or 502.

    For instance an error status, retries spent, output still invalid after its repairs, or an answer over the
    size limit. `details` says which (`status`, `attempts`) where it helps.
    """

    status = 502
    code = "model_error"
