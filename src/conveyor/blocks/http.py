"""The `http_request` block: one HTTP request through the guarded outbound client."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from email.message import Message
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from jinja2 import TemplateError
from pydantic import Field, field_validator

from conveyor.blocks.base import BlockConfig, BlockContext, BlockError, BlockInputError, Port, Ports, PortType
from conveyor.blocks.sandbox import TemplateSandbox
from conveyor.errors import OutboundBlockedError, OutboundFailedError

# The text blocks' sandbox: a recipe author's template cannot reach Python attributes, run past its deadline
# or grow past the size limit (blocks share the event loop).
_TEMPLATES = TemplateSandbox()
BODY_TEMPLATE_TIMEOUT_S = 2.0
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
_EXCERPT_CHARS = 200


class HttpRequestConfig(BlockConfig):
    """How an `http_request` node sends its request."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str | None = Field(
        default=None, max_length=8192, description="The URL; the `url` input, when wired and not empty, wins."
    )
    headers: dict[str, str] = Field(default_factory=dict, max_length=64, description="Request headers.")
    body_template: str | None = Field(
        default=None,
        max_length=100_000,
        description='A Jinja template for the body, given `body` (the input), e.g. `{"q": {{ body | tojson }}}`.',
    )
    timeout_s: float = Field(default=30.0, gt=0, le=300, description="Time for the whole exchange.")
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, le=100 * 1024 * 1024, description="Largest body read.")
    fail_on_error: bool = Field(
        default=True, description="Fail the node on a status outside 2xx; when false, output it like any other."
    )

    @field_validator("body_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _TEMPLATES.parse(value)
            except TemplateError as exc:
                raise ValueError(f"body_template is not a valid template: {exc}") from None
        return value


class HttpRequestBlock:
    """Sends one HTTP request and outputs the answer's status, text, parsed JSON and headers.

    The URL comes from the `url` input or the configuration; it goes through the guarded client, so only
    http(s) to public addresses (or ranges opened by `net.allow_cidrs`) is reachable, redirects included.
    The body is the rendered `body_template` when set, else the `body` input: text is sent as
    `text/plain`, anything else as JSON. A rendered template that is a JSON object or array is sent as
    `application/json`. A `Content-Type` in `headers` always wins.

    `json` is the parsed body when the answer says it is JSON (`application/json`, `…+json`), else null.
    A status outside 2xx fails the node (retried for 5xx, 408, 425 and 429) unless `fail_on_error` is
    false. A refused URL fails it without retry; a timeout or connection failure may be retried.
    """

    name: ClassVar[str] = "http_request"
    Config: ClassVar[type[BlockConfig]] = HttpRequestConfig

    def ports(self, config: HttpRequestConfig, wired: Iterable[str]) -> tuple[Ports, Ports]:
        inputs = {
            "url": Port(PortType.TEXT, required=config.url is None, description="The URL (overrides `url`)."),
            "body": Port(PortType.ANY, description="The request body, or the `body` of `body_template`."),
        }
        outputs = {
            "status": Port(PortType.NUMBER, description="The HTTP status code."),
            "text": Port(PortType.TEXT, description="The body as text."),
            "json": Port(PortType.JSON, description="The parsed body when it is JSON, else null."),
            "headers": Port(PortType.JSON, description="The answer's headers, names in lower case."),
        }
        return inputs, outputs

    async def run(self, ctx: BlockContext, config: HttpRequestConfig, inputs: dict[str, Any]) -> dict[str, Any]:
        url = _url(config, inputs)
        headers = dict(config.headers)
        content, content_type = _body(config, inputs.get("body"))
        if content is not None and not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = content_type
        try:
            response = await ctx.http.request(
                config.method,
                url,
                headers=headers,
                content=content,
                timeout_s=config.timeout_s,
                max_bytes=config.max_bytes,
            )
        except OutboundBlockedError as exc:
            raise BlockInputError(exc.message) from None
        except OutboundFailedError as exc:
            raise BlockError(exc.message) from None
        text = _decode(response.content, response.headers)
        status = response.status_code
        if config.fail_on_error and not 200 <= status < 300:
            host = urlsplit(response.url).hostname or "the server"
            retryable = status >= 500 or status in _RETRYABLE_STATUSES
            raise BlockError(f"HTTP {status} from {host}: {text[:_EXCERPT_CHARS]}", retryable=retryable)
        return {
            "status": status,
            "text": text,
            "json": _json(text, response.headers),
            "headers": {name.lower(): value for name, value in response.headers.items()},
        }


def _url(config: HttpRequestConfig, inputs: Mapping[str, Any]) -> str:
    value = inputs.get("url")
    if value is None or value == "":
        value = config.url
    if not value:
        raise BlockInputError("no URL: wire the `url` input or set `url` in the configuration")
    if not isinstance(value, str):
        raise BlockInputError(f"the `url` input must be text, not {type(value).__name__}")
    return value.strip()


def _body(config: HttpRequestConfig, body: Any) -> tuple[bytes | None, str]:
    """The request body and the content type it would have unless the configuration names one."""
    if config.body_template is not None:
        compiled = _TEMPLATES.prepare(config.body_template)
        try:
            rendered = _TEMPLATES.render(compiled, {"body": body}, BODY_TEMPLATE_TIMEOUT_S)
        except BlockInputError as exc:
            raise BlockInputError(f"body_template failed: {exc}") from None
        return rendered.encode(), "application/json" if _is_json_document(rendered) else "text/plain; charset=utf-8"
    if body is None:
        return None, ""
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    try:
        return json.dumps(body, ensure_ascii=False).encode(), "application/json"
    except (TypeError, ValueError) as exc:
        raise BlockInputError(f"the `body` input cannot be sent as JSON: {exc}") from None


def _is_json_document(text: str) -> bool:
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _content_type(headers: Mapping[str, str]) -> Message:
    message = Message()
    message["content-type"] = headers.get("content-type", "")
    return message


def _decode(content: bytes, headers: Mapping[str, str]) -> str:
    charset = _content_type(headers).get_content_charset() or "utf-8"
    try:
        return content.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return content.decode("utf-8", errors="replace")


def _json(text: str, headers: Mapping[str, str]) -> Any:
    kind = _content_type(headers).get_content_type()
    if kind != "application/json" and not kind.endswith("+json"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
