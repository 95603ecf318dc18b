"""Token signing and verification: only our HS256 tokens, unexpired, with our issuer and audience, pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from conveyor.auth.tokens import Scope, TokenCodec, make_scope
from conveyor.errors import UnauthorizedError, ValidationError

SECRET = b"s" * 48


def _codec() -> TokenCodec:
    return TokenCodec(SECRET, issuer="conveyor", audience="conveyor")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = SECRET) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _payload(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "conveyor",
        "aud": "conveyor",
        "issuerId": "u1",
        "tokenId": "t1",
        "iat": now,
        "exp": now + 60,
        "scopes": [{"action": "exec", "subject": "Workflow", "conditions": {}}],
    }
    claims.update(changes)
    return claims


def test_an_issued_token_carries_omnitools_claims_and_verifies() -> None:
    codec = _codec()
    token, claims = codec.issue("u1", [make_scope("exec", "Workflow", ["r1", "r2"])], 60_000)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="conveyor")
    assert payload["issuerId"] == "u1" and payload["tokenId"] == claims.token_id and payload["iss"] == "conveyor"
    assert payload["scopes"] == [{"action": "exec", "subject": "Workflow", "conditions": {"id": {"$in": ["r1", "r2"]}}}]
    assert 59 <= payload["exp"] - payload["iat"] <= 61
    verified = codec.verify(token)
    assert verified.scopes == (Scope("exec", "Workflow", frozenset({"r1", "r2"})),)


def test_expiry_is_in_milliseconds() -> None:
    token, _ = _codec().issue("u1", [make_scope("exec", "Workflow")], 1000)
    fresh = _codec()
    fresh.verify(token)
    time.sleep(2.05)
    with pytest.raises(UnauthorizedError, match="expired"):
        fresh.verify(token)
    with pytest.raises(UnauthorizedError, match="expired"):
        _codec().verify(token)  # uncached too


@pytest.mark.parametrize(
    ("header", "payload", "key"),
    [
        ({"alg": "none", "typ": "JWT"}, _payload(), None),
        ({"alg": "RS256", "typ": "JWT"}, _payload(), SECRET),  # HS-signed but claiming RS256: not on the list
        ({"alg": "HS512", "typ": "JWT"}, _payload(), SECRET),
        ({"alg": "HS256", "typ": "JWT"}, _payload(), b"t" * 48),  # another secret
        ({"alg": "HS256", "typ": "JWT"}, _payload(aud="someone-else"), SECRET),
        ({"alg": "HS256", "typ": "JWT"}, _payload(iss="someone-else"), SECRET),
        ({"alg": "HS256", "typ": "JWT"}, _payload(exp=int(time.time()) - 5), SECRET),
        ({"alg": "HS256", "typ": "JWT"}, {k: v for k, v in _payload().items() if k != "aud"}, SECRET),
        ({"alg": "HS256", "typ": "JWT"}, {k: v for k, v in _payload().items() if k != "tokenId"}, SECRET),
        ({"alg": "HS256", "typ": "JWT"}, _payload(scopes=[{"action": "exec"}]), SECRET),
        ({"alg": "HS256", "typ": "JWT"}, _payload(scopes=[{"action": "exec", "subject": "Workflow",
                                                            "conditions": {"owner": "me"}}]), SECRET),
    ],
)  # fmt: skip
def test_forged_or_foreign_tokens_are_refused(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> None:
    with pytest.raises(UnauthorizedError):
        _codec().verify(_forge(header, payload, key))


def test_a_well_formed_forgery_with_our_secret_passes_so_the_forger_test_is_meaningful() -> None:
    assert _codec().verify(_forge({"alg": "HS256", "typ": "JWT"}, _payload())).user_id == "u1"


def test_a_tampered_payload_is_refused() -> None:
    token, _ = _codec().issue("u1", [make_scope("exec", "Workflow", ["r1"])], 60_000)
    header, _, signature = token.split(".")
    widened = _b64(json.dumps(_payload(issuerId="u1")).encode())
    with pytest.raises(UnauthorizedError):
        _codec().verify(f"{header}.{widened}.{signature}")


def test_a_single_recipe_id_condition_is_accepted() -> None:
    token = _forge(
        {"alg": "HS256"}, _payload(scopes=[{"action": "exec", "subject": "Workflow", "conditions": {"id": "r9"}}])
    )
    assert _codec().verify(token).scopes[0].recipe_ids == frozenset({"r9"})


@pytest.mark.parametrize(("action", "subject"), [("", "Workflow"), ("exec", "Work flow"), ("x" * 65, "all")])
def test_scope_names_are_checked(action: str, subject: str) -> None:
    with pytest.raises(ValidationError):
        make_scope(action, subject)
