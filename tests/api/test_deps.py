"""Shared route helpers: cursors outside the range this server gives out are refused as 400."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from tests.api.shapes import assert_error

from conveyor.api.deps import decode_cursor, encode_cursor
from conveyor.errors import BadRequestError


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def test_a_cursor_round_trips() -> None:
    assert decode_cursor(encode_cursor(1_795_400_818_246, "two-branches")) == (1_795_400_818_246, "two-branches")


@pytest.mark.parametrize("raw", [f"{2**63}:x", "99999999999999999999999:x", "-1:x", "5:" + "y" * 201, "5:a\x00b"])
def test_a_cursor_out_of_range_is_a_bad_request(raw: str) -> None:
    with pytest.raises(BadRequestError):
        decode_cursor(_cursor(raw))


async def test_a_huge_cursor_is_400_on_the_lists(client: Any) -> None:
    cursor = _cursor("99999999999999999999999:x")
    for path in ("/api/v1/jobs", "/api/v1/recipes"):
        assert_error(await client.get(path, params={"cursor": cursor}), 400, "bad_request")
