"""Standard Webhooks signatures, checked with the `standardwebhooks` package."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conveyor.webhooks.signing import StandardWebhooksSigner, new_secret, secret_bytes


def test_new_secrets_are_whsec_32_bytes_and_distinct() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second and len(secret_bytes(first)) == 32


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    headers = StandardWebhooksSigner([secret]).headers("msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)


def test_rotation_sends_both_signatures_each_verifies() -> None:
    current, previous = new_secret(), new_secret()
    body = b"{}"
    headers = StandardWebhooksSigner([current, previous]).headers("msg_2", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(current).verify(body, headers)
    Webhook(previous).verify(body, headers)


def test_no_secret_no_signature() -> None:
    headers = StandardWebhooksSigner([]).headers("msg_3", 1, b"")
    assert headers == {"webhook-id": "msg_3", "webhook-timestamp": "1"}
