"""Webhook signing schemes. Standard Webhooks is the native one; other dialects plug in their own `Signer`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import Protocol

SECRET_PREFIX = "whsec_"


class Signer(Protocol):
    """Turns one attempt (delivery id, unix timestamp, body) into the headers that prove who sent it."""

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]: ...


def new_secret() -> str:
    """A new Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key of a `whsec_…` secret (the base64 after the prefix)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


class StandardWebhooksSigner:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`.

    With several secrets (a key being rotated) each signs, and the signatures go space-separated in one
    header, so a receiver holding either secret verifies the message.
    """

    def __init__(self, secrets_: Sequence[str]) -> None:
        self._keys = [secret_bytes(secret) for secret in secrets_]

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        fields = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
        if self._keys:
            signed = f"{msg_id}.{timestamp}.".encode() + body
            fields["webhook-signature"] = " ".join(
                "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in self._keys
            )
        return fields


class OmniSigner:
    """Omni's scheme: `X-Omni-Signature-Timestamp: <unix seconds>` and
    `X-Omni-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`.

    The secret is the job's own `webhookSigningSecret`, used as given (its UTF-8 bytes, no prefix or base64).
    With no secret the request goes unsigned: only the timestamp is sent. A receiver verifies with::

        expected = "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(expected, request.headers["X-Omni-Signature"]) and abs(time.time() - int(ts)) < 300
    """

    def __init__(self, secrets_: Sequence[str]) -> None:
        self._keys = [secret.encode() for secret in secrets_[:1]]

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        fields = {"X-Omni-Signature-Timestamp": str(timestamp)}
        if self._keys:
            digest = hmac.new(self._keys[0], f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
            fields["X-Omni-Signature"] = "sha256=" + digest
        return fields
