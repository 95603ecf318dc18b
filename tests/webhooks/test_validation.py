"""The webhook list check every dialect shares: count, method, URL and headers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conveyor.errors import ValidationError
from conveyor.webhooks.validation import MAX_WEBHOOKS, check_webhooks


def test_a_good_list_becomes_rows_with_defaults() -> None:
    rows = check_webhooks(
        [
            {"url": "https://example.com/hook"},
            {"url": "http://example.com/x?a=1", "method": "get", "headers": {"X-A": "1"}},
        ]
    )
    assert rows == [
        ("https://example.com/hook", "POST", "{}", "native"),
        ("http://example.com/x?a=1", "GET", orjson.dumps({"X-A": "1"}).decode(), "native"),
    ]
    assert check_webhooks(None) == [] and check_webhooks([], dialect="omni") == []


def test_at_most_five() -> None:
    check_webhooks([{"url": "https://example.com"}] * MAX_WEBHOOKS)
    with pytest.raises(ValidationError, match="at most 5"):
        check_webhooks([{"url": "https://example.com"}] * (MAX_WEBHOOKS + 1))


@pytest.mark.parametrize(
    "hook",
    [
        {"url": "ftp://example.com/x"},
        {"url": "file:///etc/passwd"},
        {"url": "https://"},
        {"url": "https://example.com/" + "a" * 3000},
        {"url": "https://example.com/a b"},
        {"url": 5},
        {},
        {"url": "https://example.com", "method": "PUT"},
        {"url": "https://example.com", "extra": 1},
        {"url": "https://example.com", "headers": ["X-A"]},
        {"url": "https://example.com", "headers": {"X-A": "a\r\nb"}},
        {"url": "https://example.com", "headers": {"bad name": "x"}},
        {"url": "https://example.com", "headers": {f"X-{i}": "v" for i in range(30)}},
        "https://example.com",
    ],
)
def test_bad_webhooks_are_refused(hook: Any) -> None:
    with pytest.raises(ValidationError):
        check_webhooks([hook])


@pytest.mark.parametrize("name", ["webhook-signature", "Webhook-Id", "Host", "content-length", "Content-Type"])
def test_headers_the_delivery_sets_cannot_be_overridden(name: str) -> None:
    with pytest.raises(ValidationError, match=name) as raised:
        check_webhooks([{"url": "https://example.com", "headers": {name: "x"}}])
    assert raised.value.status == 422
