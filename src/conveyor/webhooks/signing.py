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
