"""Job notices between processes' worth of `JobNotices`, over a real Valkey: wake-ups and "deliveries written"
reach the servers, cancel requests the workers; a process's own notices do not come back to it; what one process
publishes in one turn of its loop goes out as one message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from conveyor.executors.relay import CANCELS_CHANNEL, NOTICES_CHANNEL, RedisNoticeRelay
from conveyor.jobs.notices import JobNotices, wait_for_notice

Relays = tuple[RedisNoticeRelay, RedisNoticeRelay, RedisNoticeRelay]


@pytest.fixture
async def relays(fresh_broker: str) -> AsyncIterator[Relays]:
    """Two servers and a worker."""
    started = (
        RedisNoticeRelay(fresh_broker, JobNotices(), runs_jobs=False),
        RedisNoticeRelay(fresh_broker, JobNotices(), runs_jobs=False),
        RedisNoticeRelay(fresh_broker, JobNotices(), runs_jobs=True),
    )
    for relay in started:
        await relay.start()
    try:
        for relay in started:
            await asyncio.wait_for(relay.subscribed.wait(), 10)
        yield started
    finally:
        for relay in started:
            await relay.stop()


async def test_an_end_published_in_one_process_wakes_a_waiter_in_another(relays: Relays) -> None:
    _, server, worker = relays
    with server.notices.watch("job-1", ends_only=True) as ended, server.notices.watch("job-1") as changed:
        worker.notices.publish(["job-1"])  # progress: wakes the plain watcher only
        assert await wait_for_notice(changed, 5.0)
        assert not ended.is_set()
        worker.notices.publish(["job-1"], ended=True)
        assert await wait_for_notice(ended, 5.0)


async def test_a_process_does_not_hear_itself_twice(relays: Relays) -> None:
    first, second, _ = relays
    woken = 0

    with first.notices.watch("job-2") as changed:
        first.notices.publish(["job-2"])
        assert changed.is_set()  # delivered locally at once
        changed.clear()
        # A notice from the other side proves the channel carried everything sent before it.
        with first.notices.watch("marker") as marker:
            second.notices.publish(["marker"])
            assert await wait_for_notice(marker, 5.0)
        woken = changed.is_set()
    assert not woken


async def test_cancels_reach_workers_and_deliveries_reach_servers_only(relays: Relays) -> None:
    server, other_server, worker = relays
    cancelled: dict[str, list[str]] = {"server": [], "worker": []}
    delivered = {"server": asyncio.Event(), "worker": asyncio.Event()}
    other_server.on_cancel, worker.on_cancel = cancelled["server"].append, cancelled["worker"].append
    other_server.on_deliveries, worker.on_deliveries = delivered["server"].set, delivered["worker"].set
    server.request_cancel("job-3")
    worker.announce_deliveries()
    await asyncio.wait_for(delivered["server"].wait(), 5.0)
    for _ in range(500):  # bounded: 5 s
        if cancelled["worker"]:
            break
        await asyncio.sleep(0.01)
    assert cancelled["worker"] == ["job-3"]
    # A marker on each channel, sent after the rest, proves nothing else is on its way to the wrong side.
    with worker.notices.watch("marker") as to_worker:
        other_server.notices.publish(["marker"])
        other_server.request_cancel("marker")
        for _ in range(500):
            if "marker" in cancelled["worker"]:
                break
            await asyncio.sleep(0.01)
    assert cancelled["server"] == [] and not delivered["worker"].is_set() and not to_worker.is_set()


async def test_notices_of_one_loop_turn_go_out_as_one_message(relays: Relays, fresh_broker: str) -> None:
    """Under load a process publishes many notices per turn of its loop: one message carries them all (ends in
    one, other changes in another), instead of one message per job."""
    _, server, worker = relays
    listener = aioredis.Redis.from_url(fresh_broker)
    try:
        async with listener.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(NOTICES_CHANNEL, CANCELS_CHANNEL)
            with server.notices.watch("job-last", ends_only=True) as last:
                for i in range(50):
                    worker.notices.publish([f"job-{i}"])
                    worker.notices.publish([f"job-{i}"], ended=i % 2 == 0)
                worker.notices.publish(["job-last"], ended=True)
                worker.announce_deliveries()
                assert await wait_for_notice(last, 5.0)
            messages = []
            for _ in range(20):  # bounded: all was published before `last` arrived; None is a subscribe reply
                message = await pubsub.get_message(timeout=0.2)
                if message is not None:
                    messages.append((message["channel"].decode(), orjson.loads(message["data"])))
    finally:
        await listener.aclose()
    ended = {f"job-{i}" for i in range(0, 50, 2)} | {"job-last"}
    changed = {f"job-{i}" for i in range(1, 50, 2)}
    got = {(channel, m.get("ended"), m.get("hooks")): set(m["ids"]) for channel, m in messages}
    assert len(messages) == 3 and got == {
        (NOTICES_CHANNEL, True, None): ended,
        (NOTICES_CHANNEL, False, None): changed,
        (NOTICES_CHANNEL, None, True): set(),
    }


async def test_a_broker_that_never_answers_does_not_stall_publishing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-open broker connection (here: a listener that reads and never answers) fails each publish within
    `PUBLISH_TIMEOUT_S`; later notices are still taken and tried, instead of waiting behind the first for ever."""
    from conveyor.executors import relay as relay_module

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(relay_module, "PUBLISH_TIMEOUT_S", 0.2)
    relay = RedisNoticeRelay(f"redis://127.0.0.1:{port}/0", JobNotices(), runs_jobs=True)
    await relay.start()
    try:
        relay.notices.publish(["first"], ended=True)
        await asyncio.sleep(0.05)
        assert relay._publishing  # stuck on the silent broker
        relay.notices.publish(["second"], ended=True)
        for _ in range(100):  # bounded: 5 s; the first publish gives up after 0.2 s, the second after 0.2 s more
            if not relay._publishing and not relay._has_queued():
                break
            await asyncio.sleep(0.05)
        assert not relay._publishing and not relay._has_queued()
    finally:
        await relay.stop()
        server.close()
        await server.wait_closed()
