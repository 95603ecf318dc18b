"""A scripted OpenAI-compatible server on 127.0.0.1: answers queued replies in order and records every request.

The hosted LLM API is an outside service we cannot run, so this is the one stand-in the suite allows. It is a
real HTTP/1.1 server (`tests.receiver.Receiver`) answering `/v1/chat/completions` with the replies queued by
`script()`, built by `completion`, `failure` and `sse`; a request past the script gets 418 and an error body.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from tests.receiver import Receiver, Reply, Seen

PATH = "/v1/chat/completions"
MODEL = "scripted-model"


class ScriptedOpenAI:
    """The scripted server; use as `async with ScriptedOpenAI() as server`."""

    def __init__(self) -> None:
        self._receiver = Receiver("127.0.0.1")
        self._receiver.routes[PATH] = failure(418, "no scripted reply left")

    @property
    def base_url(self) -> str:
        return self._receiver.url("/v1")

    @property
    def requests(self) -> list[Seen]:
        """Every request received, in order."""
        return self._receiver.seen

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON body of every request, in order."""
        return [orjson.loads(seen.body) for seen in self._receiver.seen]

    def script(self, *replies: Reply) -> None:
        """Queues replies, answered one per request in order."""
        self._receiver.scripts.setdefault(PATH, []).extend(replies)

    def unanswered(self) -> int:
        """How many scripted replies are still queued."""
        return len(self._receiver.scripts.get(PATH, []))

    async def __aenter__(self) -> ScriptedOpenAI:
        await self._receiver.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._receiver.close()


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, headers=headers or {}, body=orjson.dumps(body), content_type="application/json")


def completion(
    content: str,
    *,
    usage: tuple[int, int] | None = (10, 5),
    finish_reason: str = "stop",
    model: str = MODEL,
) -> Reply:
    """A 200 chat completion; `usage` is (prompt, completion) tokens, or None to leave it out."""
    body: dict[str, Any] = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return _json(200, body)


def failure(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error answer in OpenAI's shape (`{"error": {"message": ...}}`)."""
    return _json(status, {"error": {"message": message, "type": "scripted", "code": None}}, headers)


def sse(deltas: Iterable[str], *, usage: tuple[int, int] | None = (10, 5)) -> Reply:
    """A 200 Server-Sent Events stream: one chunk per delta, a finish chunk, a usage chunk, then `[DONE]`."""
    events = [": scripted keep-alive comment"]
    for delta in deltas:
        chunk = {"model": MODEL, "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
        events.append("data: " + orjson.dumps(chunk).decode())
    finish = {"model": MODEL, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    events.append("data: " + orjson.dumps(finish).decode())
    if usage is not None:
        counts = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
        events.append("data: " + orjson.dumps({"model": MODEL, "choices": [], "usage": counts}).decode())
    events.append("data: [DONE]")
    body = "".join(event + "\n\n" for event in events).encode()
    return Reply(status=200, body=body, content_type="text/event-stream")
