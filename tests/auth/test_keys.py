"""API key format: kind prefix, 256-bit body, checksum refusal, hashing, webhook secrets, the rate limiter."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.auth.keys import (
    KEY_CHARS,
    RateLimiter,
    check_key,
    display_prefix,
    generate_key,
    hash_key,
    looks_like_key,
    new_webhook_secret,
)
from conveyor.errors import UnauthorizedError, ValidationError

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize(("kind", "tag"), [("personal", "pat"), ("org", "org"), ("recipe", "rcp")])
def test_a_key_has_its_kind_prefix_a_base62_body_and_passes_its_own_check(kind: str, tag: str) -> None:
    key = generate_key(kind)
    assert re.fullmatch(rf"cvy_{tag}_[0-9A-Za-z]{{49}}", key), key
    assert len(key) == KEY_CHARS
    assert check_key(key) == kind
    assert looks_like_key(key)
    assert display_prefix(key) == key[:14] and display_prefix(key).startswith(f"cvy_{tag}_")


def test_keys_are_random() -> None:
    keys = {generate_key("personal") for _ in range(200)}
    assert len(keys) == 200


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        generate_key("admin")


@given(st.data())
def test_any_one_character_change_is_refused(data: st.DataObject) -> None:
    key = generate_key(data.draw(st.sampled_from(["personal", "org", "recipe"])))
    position = data.draw(st.integers(min_value=len("cvy_pat_"), max_value=len(key) - 1))
    replacement = data.draw(st.sampled_from(ALPHABET).filter(lambda c: c != key[position]))
    changed = key[:position] + replacement + key[position + 1 :]
    with pytest.raises(UnauthorizedError, match="checksum"):
        check_key(changed)


def test_swapping_the_kind_breaks_the_checksum() -> None:
    key = generate_key("recipe")
    with pytest.raises(UnauthorizedError):
        check_key(key.replace("cvy_rcp_", "cvy_pat_", 1))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "cvy_",
        "cvy_pat_",
        "cvy_xyz_" + "0" * 49,
        "cvy_pat-" + "0" * 49,
        "cvy_pat_" + "0" * 48,
        "cvy_pat_" + "!" * 49,
    ],
)
def test_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(UnauthorizedError):
        check_key(bad)


def test_truncated_and_extended_keys_are_refused() -> None:
    key = generate_key("org")
    for bad in (key[:-1], key + "0", key[1:]):
        with pytest.raises(UnauthorizedError):
            check_key(bad)


def test_the_hash_is_sha256_hex_and_differs_per_key() -> None:
    key = generate_key("personal")
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_key(key))
    assert key not in hash_key(key)
    assert hash_key(key) != hash_key(generate_key("personal"))


def test_jwts_are_not_taken_for_keys() -> None:
    assert not looks_like_key("eyJhbGciOiJIUzI1NiJ9.e30.sig")


def test_webhook_secrets_are_standard_webhooks_format() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert secret != new_webhook_secret()


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_allows_a_minute_s_burst_then_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    assert [limiter.take("a", 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", 3)
    assert wait == pytest.approx(20.0)  # 3 per minute: one every 20 s
    assert limiter.take("b", 3) == 0.0  # another key has its own bucket
    clock.now += 20.0
    assert limiter.take("a", 3) == 0.0
    assert limiter.take("a", 3) > 0


def test_the_limiter_s_memory_is_bounded() -> None:
    limiter = RateLimiter(max_keys=10, clock=FakeClock())
    for i in range(100):
        assert limiter.take(f"k{i}", 1) == 0.0
    assert len(limiter._buckets) <= 10
