"""Checks a job's webhook list at submit (every dialect shares it): count, method, URL and custom headers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from conveyor.errors import ValidationError

MAX_WEBHOOKS = 5
MAX_URL_LENGTH = 2048
MAX_HEADERS = 20
MAX_HEADER_NAME = 128
MAX_HEADER_VALUE = 4096
METHODS = frozenset({"POST", "GET"})
# Set by the delivery itself: a receiver must be able to trust them (the signature) or parse the request.
RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

WebhookRow = tuple[str, str, str, str]  # (url, method, headers JSON, dialect): a `job_webhooks` row


def check_webhooks(raw: Any, *, dialect: str = "native", field: str = "webhooks") -> list[WebhookRow]:
    """The rows to store for a submitted webhook list (`[{"url", "method"?, "headers"?}]`); 422 naming what is wrong."""
    if raw is None:
        return []
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise ValidationError(f"{field} must be a list", details=[{"field": field}])
    if len(raw) > MAX_WEBHOOKS:
        raise ValidationError(
            f"at most {MAX_WEBHOOKS} webhooks per job (got {len(raw)})", details=[{"field": field, "max": MAX_WEBHOOKS}]
        )
    return [_check_one(hook, dialect, f"{field}[{index}]") for index, hook in enumerate(raw)]


def _check_one(hook: Any, dialect: str, where: str) -> WebhookRow:
    if not isinstance(hook, Mapping):
        raise ValidationError(f"{where} must be an object with a url", details=[{"field": where}])
    unknown = set(hook) - {"url", "method", "headers"}
    if unknown:
        raise ValidationError(f"{where} has unknown fields: {', '.join(sorted(map(str, unknown)))}")
    url = check_url(hook.get("url"), f"{where}.url")
    method = hook.get("method") or "POST"
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ValidationError(f"{where}.method must be POST or GET", details=[{"field": f"{where}.method"}])
    headers = check_headers(hook.get("headers"), f"{where}.headers")
    return url, method.upper(), orjson.dumps(headers).decode(), dialect


def check_url(url: Any, where: str = "url") -> str:
    """An http(s) URL of bounded length with a host; the guarded client checks its address at delivery."""
    if not isinstance(url, str) or not url:
        raise ValidationError(f"{where} is required", details=[{"field": where}])
    if len(url) > MAX_URL_LENGTH or any(c in url for c in "\r\n\0 ") or not url.isascii():
        raise ValidationError(f"{where} must be a URL of at most {MAX_URL_LENGTH} ASCII characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise ValidationError(f"{where} is not a valid URL", details=[{"field": where}]) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"{where} must be an http or https URL with a host", details=[{"field": where}])
    return url


def check_headers(headers: Any, where: str = "headers") -> dict[str, str]:
    """Custom headers: bounded, printable, and never one the delivery sets (`webhook-*`, Host, Content-*)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ValidationError(f"{where} must be an object of strings", details=[{"field": where}])
    if len(headers) > MAX_HEADERS:
        raise ValidationError(f"{where}: at most {MAX_HEADERS} headers", details=[{"field": where}])
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name) or len(name) > MAX_HEADER_NAME:
            raise ValidationError(f"{where}: {str(name)[:64]!r} is not a valid header name", details=[{"field": where}])
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower.startswith("webhook-"):
            raise ValidationError(
                f"{where}: header {name!r} is set by the delivery and cannot be overridden",
                details=[{"field": where, "header": name}],
            )
        # Name the header, never its value: values carry tokens.
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE or not value.isascii():
            raise ValidationError(f"{where}: header {name!r} must be ASCII text of at most {MAX_HEADER_VALUE} chars")
        if any(c in value for c in "\r\n\0"):
            raise ValidationError(f"{where}: header {name!r} has a value with control characters")
        if lower in {n.lower() for n in checked}:
            raise ValidationError(f"{where}: header {name!r} is given twice")
        checked[name] = value
    return checked
